/* Leases (leases.h): a list per connection; the counts kept in one place, here. */
#include "leases.h"

#include <errno.h>
#include <stdlib.h>

#include "residency.h"

int ls_lease_take(struct ls_leases *all, struct ls_lease_set *set, struct ls_resident *res,
		  struct ls_lease **out, struct ls_err *err)
{
	uint64_t bytes = ls_res_pinned_bytes(res);
	if (all->pin_limit && set->pinned_bytes + bytes > all->pin_limit)
		return ls_err_set(err, LS_E_PIN_LIMIT,
				  "%s@%u needs %llu bytes; this connection pins %llu of its %llu",
				  ls_res_name(res), ls_res_version(res), (unsigned long long)bytes,
				  (unsigned long long)set->pinned_bytes,
				  (unsigned long long)all->pin_limit);
	struct ls_lease *l = calloc(1, sizeof(*l));
	if (!l)
		return ls_err_set(err, -ENOMEM, "out of memory");
	l->id = ++all->next_id;
	l->res = res;
	l->pinned_bytes = bytes;
	l->next = set->head;
	set->head = l;
	set->pinned_bytes += bytes;
	set->count++;
	all->held++;
	ls_res_pin(res);
	*out = l;
	return 0;
}

/* The one place a lease ends. */
static void ls_lease_end(struct ls_leases *all, struct ls_lease_set *set, struct ls_lease *l)
{
	set->pinned_bytes -= l->pinned_bytes;
	set->count--;
	all->held--;
	ls_res_unpin(l->res);
	free(l);
}

int ls_lease_release(struct ls_leases *all, struct ls_lease_set *set, uint64_t id)
{
	struct ls_lease **pl = &set->head;
	while (*pl && (*pl)->id != id)
		pl = &(*pl)->next;
	if (!*pl)
		return LS_E_NOT_FOUND;
	struct ls_lease *l = *pl;
	*pl = l->next;
	ls_lease_end(all, set, l);
	return 0;
}

void ls_leases_end_all(struct ls_leases *all, struct ls_lease_set *set)
{
	while (set->head) {
		struct ls_lease *l = set->head;
		set->head = l->next;
		ls_lease_end(all, set, l);
	}
}
