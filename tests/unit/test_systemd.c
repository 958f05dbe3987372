/* The systemd units and snippets are valid for systemd's own tools. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "synth.h"

static int run(const char *cmd)
{
	int rc = system(cmd);
	return rc == -1 ? -1 : WEXITSTATUS(rc);
}

static bool have(const char *tool)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", tool);
	return run(cmd) == 0;
}

Test(systemd, service_and_socket_units_pass_systemd_analyze_verify)
{
	if (!have("systemd-analyze"))
		cr_skip_test("systemd-analyze is not installed");
	char *dir = synth_mkdtemp("units");
	char cmd[4096];
	/* The built unit, with ExecStart pointing at the daemon of this build. */
	snprintf(cmd, sizeof(cmd),
		 "sed 's|^ExecStart=[^ ]*|ExecStart=%s/daemon/lorastored|' "
		 "%s/systemd/lorastored.service > %s/lorastored.service && "
		 "cp %s/systemd/lorastored.socket %s/ && "
		 "systemd-analyze verify %s/lorastored.service %s/lorastored.socket",
		 LS_BINARY_DIR, LS_BINARY_DIR, dir, LS_SOURCE_DIR, dir, dir, dir);
	cr_assert_eq(run(cmd), 0, "systemd-analyze verify failed: %s", cmd);
	synth_rm_rf(dir);
	free(dir);
}

Test(systemd, service_runs_as_notify_with_the_hardening_it_promises)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/systemd/lorastored.service", LS_BINARY_DIR);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "%s", path);
	char text[8192];
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	const char *want[] = {"Type=notify\n",		   "User=lorastore\n",
			      "RuntimeDirectory=lorastore\n", "StateDirectory=lorastore\n",
			      "ProtectSystem=strict\n",	   "ProtectHome=yes\n",
			      "PrivateTmp=yes\n",		   "NoNewPrivileges=yes\n",
			      "RestrictAddressFamilies=AF_UNIX\n", "LimitMEMLOCK=infinity\n",
			      "Restart=on-failure\n"};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		cr_expect(strstr(text, want[i]), "lorastored.service lacks %s", want[i]);
}

Test(systemd, sysusers_and_tmpfiles_snippets_apply_to_an_empty_root)
{
	if (!have("systemd-sysusers") || !have("systemd-tmpfiles"))
		cr_skip_test("systemd-sysusers or systemd-tmpfiles is not installed");
	char *root = synth_mkdtemp("sysroot");
	char cmd[4096];
	snprintf(cmd, sizeof(cmd),
		 "mkdir -p %s/etc %s/usr/lib/sysusers.d %s/usr/lib/tmpfiles.d && "
		 "cp %s/systemd/lorastore.sysusers %s/usr/lib/sysusers.d/lorastore.conf && "
		 "cp %s/systemd/lorastore.tmpfiles %s/usr/lib/tmpfiles.d/lorastore.conf && "
		 "systemd-sysusers --root=%s >/dev/null 2>&1 && "
		 "systemd-tmpfiles --root=%s --create >/dev/null 2>&1 && "
		 "grep -q '^lorastore:' %s/etc/passwd && grep -q '^lorastore-admin:' %s/etc/group && "
		 "test -d %s/var/lib/lorastore && test -d %s/run/lorastore",
		 root, root, root, LS_SOURCE_DIR, root, LS_SOURCE_DIR, root, root, root, root, root,
		 root, root);
	cr_assert_eq(run(cmd), 0, "applying the snippets failed: %s", cmd);
	synth_rm_rf(root);
	free(root);
}
