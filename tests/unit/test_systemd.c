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
	const char *want[] = {"Type=notify\n",
			      "User=lorastore\n",
			      "RuntimeDirectory=lorastore\n",
			      "StateDirectory=lorastore\n",
			      "ProtectSystem=strict\n",
			      "ProtectHome=yes\n",
			      "PrivateTmp=yes\n",
			      "NoNewPrivileges=yes\n",
			      "RestrictAddressFamilies=AF_UNIX\n",
			      "LimitMEMLOCK=infinity\n",
			      "LimitNOFILE=",
			      "Restart=on-failure\n",
			      "CapabilityBoundingSet=\n",
			      "SystemCallFilter=@system-service\n",
			      "DevicePolicy=closed\n",
			      "DeviceAllow=char-nvidia-frontend rw\n",
			      "DeviceAllow=char-nvidia-uvm rw\n",
			      "PrivateNetwork=yes\n",
			      "MemoryDenyWriteExecute=yes\n",
			      "UMask="};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		cr_expect(strstr(text, want[i]), "lorastored.service lacks %s", want[i]);
}

/* Read a score such as "0.6" from "Overall exposure level for ...: 0.6 SAFE". */
static double exposure_of(const char *output)
{
	const char *p = strstr(output, "Overall exposure level");
	if (!p || !(p = strchr(p, ':')))
		return -1;
	return strtod(p + 1, NULL);
}

Test(systemd, service_exposure_is_at_most_2_0_by_systemd_analyze_security)
{
	if (!have("systemd-analyze"))
		cr_skip_test("systemd-analyze is not installed");
	char *dir = synth_mkdtemp("units");
	char cmd[4096];
	snprintf(cmd, sizeof(cmd),
		 "cp %s/systemd/lorastored.service %s/ && "
		 "systemd-analyze security --offline=yes --no-pager %s/lorastored.service 2>&1",
		 LS_BINARY_DIR, dir, dir);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	static char out[65536];
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	pclose(p);
	double score = exposure_of(out);
	cr_assert_geq(score, 0, "no exposure level in the output of %s:\n%s", cmd, out);
	cr_assert_leq(score, 2.0, "exposure %.1f, more than 2.0:\n%s", score, out);
	synth_rm_rf(dir);
	free(dir);
}

Test(systemd, the_socket_belongs_to_the_clients_group_not_the_admin_group)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/systemd/lorastored.socket", LS_SOURCE_DIR);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "%s", path);
	char text[4096];
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	cr_assert_not_null(strstr(text, "\nSocketGroup=lorastore\n"), "%s", text);
	cr_assert_not_null(strstr(text, "\nSocketMode=0660\n"), "%s", text);
	cr_assert_null(strstr(text, "SocketGroup=lorastore-admin"), "%s", text);
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
