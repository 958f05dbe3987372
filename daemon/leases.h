/*
 * Leases: the one owner of who pins what.  A lease is one pin of one
 * resident version, held by one connection; while any lease on a version
 * exists, residency neither evicts nor frees it.  This module keeps each
 * connection's leases and the bytes they pin against the per-client limit
 * (--client-pin-limit), and the daemon's count of leases held.  A
 * connection's leases end all at once when it goes (ls_leases_end_all), a
 * crash included.  Loop thread only.
 */
#ifndef LS_LEASES_H
#define LS_LEASES_H

#include <stdint.h>

#include "ls_error.h"

struct ls_resident;

/* One pin of one resident version. */
struct ls_lease {
	uint64_t id;                 /* unique in this run of the daemon */
	struct ls_resident *res;
	uint64_t pinned_bytes;       /* what it counts against its connection's limit */
	struct ls_lease *next;
};

/* The leases of one connection. */
struct ls_lease_set {
	struct ls_lease *head;
	uint64_t pinned_bytes;       /* bytes its leases pin, summed */
	uint64_t count;
};

/* The daemon's leases, every connection's. */
struct ls_leases {
	uint64_t pin_limit;          /* bytes one connection may pin; 0: no limit */
	uint64_t next_id;
	uint64_t held;               /* leases held, all connections */
};

/*
 * Pin res for set: 0 with *out, LS_E_PIN_LIMIT when the connection would
 * pin more than its limit, -ENOMEM (each with err).
 */
int ls_lease_take(struct ls_leases *all, struct ls_lease_set *set, struct ls_resident *res,
		  struct ls_lease **out, struct ls_err *err);

/* End the lease id of set: 0, or LS_E_NOT_FOUND when set holds none of that id. */
int ls_lease_release(struct ls_leases *all, struct ls_lease_set *set, uint64_t id);

/* End every lease of set: its connection is going. */
void ls_leases_end_all(struct ls_leases *all, struct ls_lease_set *set);

#endif
