/* Leases (leases.h): a list per connection; the counts kept in one place, here. */
#include "leases.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "residency.h"

int ls_lease_take(struct ls_leases *all, struct ls_lease_set *set, struct ls_resident *res,
		  struct ls_lease **out, struct ls_err *err)
{
	uint64_t bytes = ls_res_pinned_bytes(res);
	uint64_t warm = 0, n_warm;
	if (all->pin_limit && set->page)
		warm = ls_lease_page_pinned(all, set, &n_warm);
	if (all->pin_limit && set->pinned_bytes + warm + bytes > all->pin_limit)
		return ls_err_set(err, LS_E_PIN_LIMIT,
				  "%s@%u needs %llu bytes; this connection pins %llu of its %llu",
				  ls_res_name(res), ls_res_version(res), (unsigned long long)bytes,
				  (unsigned long long)(set->pinned_bytes + warm),
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
	if (!set->page)
		return;
	/* Its last acquires count, then its warm leases end with the mapping. */
	uint64_t n = atomic_load_explicit(&set->page->acquires, memory_order_relaxed);
	if (n > set->page_acquires_seen)
		all->warm_acquires += n - set->page_acquires_seen;
	if (set->page_prev)
		set->page_prev->page_next = set->page_next;
	else
		all->pages = set->page_next;
	if (set->page_next)
		set->page_next->page_prev = set->page_prev;
	munmap(set->page, LS_LEASE_PAGE_BYTES);
	set->page = NULL;
	set->page_prev = set->page_next = NULL;
	/* Deleted versions its page alone held go now, not at the next tick. */
	if (all->res)
		ls_res_rescan(all->res);
}

/* ---- Lease pages */

int ls_lease_page_open(struct ls_leases *all, struct ls_lease_set *set, int *fd_out,
		       struct ls_err *err)
{
	if (set->page)
		return ls_err_set(err, -EEXIST, "this connection has a lease page already");
	int fd = memfd_create("lorastore-leases", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return ls_err_set(err, -errno, "memfd_create: %s", strerror(errno));
	void *p = MAP_FAILED;
	if (ftruncate(fd, LS_LEASE_PAGE_BYTES) == 0)
		p = mmap(NULL, LS_LEASE_PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	/* The client cannot shrink it under the daemon's reads (SIGBUS), nor grow it. */
	if (p == MAP_FAILED ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		int e = errno;
		if (p != MAP_FAILED)
			munmap(p, LS_LEASE_PAGE_BYTES);
		close(fd);
		return ls_err_set(err, -e, "lease page: %s", strerror(e));
	}
	struct ls_lease_page *page = p;
	page->magic = LS_LEASE_PAGE_MAGIC;
	page->n_slots = (uint32_t)LS_LEASE_SLOTS;
	set->page = page;
	set->page_acquires_seen = 0;
	set->page_prev = NULL;
	set->page_next = all->pages;
	if (all->pages)
		all->pages->page_prev = set;
	all->pages = set;
	*fd_out = fd;
	return 0;
}

bool ls_lease_pages_hold(const struct ls_leases *all, uint64_t generation, uint32_t tier)
{
	uint64_t word = LS_LEASE_WORD(generation, tier) | LS_LEASE_HELD;
	for (const struct ls_lease_set *set = all->pages; set; set = set->page_next)
		for (size_t i = 0; i < LS_LEASE_SLOTS; i++)
			/*
			 * seq_cst: after the removal from the directory (directory.h);
			 * acquire too: the client's reads come before its release.
			 */
			if (atomic_load_explicit(&set->page->slots[i], memory_order_seq_cst) == word)
				return true;
	return false;
}

static int ls_u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

size_t ls_lease_pages_held(const struct ls_leases *all, uint64_t **out)
{
	size_t n = 0, cap = 0;
	uint64_t *v = NULL;
	*out = NULL;
	for (const struct ls_lease_set *set = all->pages; set; set = set->page_next)
		for (size_t i = 0; i < LS_LEASE_SLOTS; i++) {
			uint64_t w = atomic_load_explicit(&set->page->slots[i], memory_order_relaxed);
			if (!(w & LS_LEASE_HELD))
				continue;
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				uint64_t *grown = realloc(v, cap * sizeof(*v));
				if (!grown) {
					free(v);
					return 0;
				}
				v = grown;
			}
			v[n++] = LS_LEASE_GEN(w);
		}
	if (n)
		qsort(v, n, sizeof(*v), ls_u64_cmp);
	*out = v;
	return n;
}

/* The resident entry a slot's word names, or NULL (garbage, or not resident there). */
static struct ls_resident *ls_page_word_entry(const struct ls_leases *all, uint64_t word)
{
	struct ls_tier *t = all->res ? ls_res_tier_at(all->res, LS_LEASE_TIER(word)) : NULL;
	return t ? ls_res_find(t, LS_LEASE_GEN(word)) : NULL;
}

uint64_t ls_lease_page_pinned(const struct ls_leases *all, const struct ls_lease_set *set,
			      uint64_t *count)
{
	uint64_t bytes = 0;
	*count = 0;
	if (!set->page)
		return 0;
	for (size_t i = 0; i < LS_LEASE_SLOTS; i++) {
		uint64_t w = atomic_load_explicit(&set->page->slots[i], memory_order_relaxed);
		if (!(w & LS_LEASE_HELD))
			continue;
		(*count)++;
		struct ls_resident *e = ls_page_word_entry(all, w);
		if (e)
			bytes += ls_res_pinned_bytes(e);
	}
	return bytes;
}

void ls_lease_pages_look(struct ls_leases *all,
			 void (*used)(void *ctx, uint64_t generation, uint32_t tier),
			 void (*over)(void *ctx, struct ls_lease_set *set, uint64_t bytes),
			 void *ctx)
{
	struct ls_lease_set *next;
	for (struct ls_lease_set *set = all->pages; set; set = next) {
		next = set->page_next;
		uint64_t n = atomic_load_explicit(&set->page->acquires, memory_order_relaxed);
		if (n != set->page_acquires_seen) {
			/* The client's own count: trusted for figures and LRU order, never for safety. */
			if (n > set->page_acquires_seen)
				all->warm_acquires += n - set->page_acquires_seen;
			set->page_acquires_seen = n;
			for (size_t i = 0; i < LS_LEASE_SLOTS; i++) {
				uint64_t w = atomic_load_explicit(&set->page->slots[i],
								  memory_order_relaxed);
				if (w && ls_page_word_entry(all, w))
					used(ctx, LS_LEASE_GEN(w), LS_LEASE_TIER(w));
			}
		}
		/* Every page, whatever its count says: the limit cannot be dodged by not counting. */
		if (!all->pin_limit)
			continue;
		uint64_t count, bytes = ls_lease_page_pinned(all, set, &count);
		if (all->pin_limit && set->pinned_bytes + bytes > all->pin_limit)
			over(ctx, set, set->pinned_bytes + bytes);
	}
}
