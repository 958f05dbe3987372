/* The origin of lorastored's catalog, from its options and the AWS conventions. */
#ifndef LS_ORIGIN_SETUP_H
#define LS_ORIGIN_SETUP_H

#include "config.h"
#include "ls_error.h"
#include "store.h"

/*
 * With --origin: endpoint, region and credentials found (options, then the
 * AWS environment variables), the origin opened and attached to store.
 * Nothing is asked of it here: start-up never waits on the network.  0 when there is no
 * origin or it is attached; -EINVAL (bad options, no credentials), -ENOMEM.
 */
int ls_origin_setup(const struct ls_config *cfg, struct ls_store *store, struct ls_err *err);

#endif
