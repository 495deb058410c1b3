//! The man page sections an option list cannot say. Keep them true with README.

/// A man page section: a title, an introduction, and terms with their explanations.
pub(crate) struct Section {
    pub(crate) title: &'static str,
    pub(crate) intro: &'static str,
    pub(crate) items: &'static [(&'static str, &'static str)],
}

/// `section` as roff.
pub(crate) fn roff(section: &Section) -> String {
    let mut out = format!(".SH \"{}\"\n", section.title);
    if !section.intro.is_empty() {
        out.push_str(&text(section.intro));
        out.push('\n');
    }
    for (term, explanation) in section.items {
        out.push_str(".TP\n");
        out.push_str(&format!("\\fB{}\\fR\n", text(term)));
        out.push_str(&text(explanation));
        out.push('\n');
    }
    out
}

/// Text safe in roff: backslashes escaped, and no line starting with a control character.
fn text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .lines()
        .map(|line| {
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) const CLIENT: &[Section] = &[
    Section {
        title: "EXIT STATUS",
        intro: "cq_client exits with the job's own status, so that it can stand in for the command:",
        items: &[
            ("0 to 123", "the command ran and exited with this status"),
            ("124", "the job ran past its time limit and was killed"),
            (
                "125",
                "the job was cancelled, or lost (the server stopped while it ran)",
            ),
            (
                "126",
                "the command could not be started (not permitted, not allowed by the server's policy)",
            ),
            ("127", "the command was not found"),
            ("128+N", "the command was killed by signal N"),
            (
                "130",
                "cq_client was interrupted (Ctrl-C) while waiting; the job goes on: wait for it again with --wait ID",
            ),
            (
                "255",
                "cq itself failed: bad arguments, no connection, a refused credential, an unauthenticated reply, a server error, or a post script that failed; one line says what and what to do",
            ),
        ],
    },
    Section {
        title: "POST SCRIPT",
        intro: "With -P SCRIPT, once the job has ended SCRIPT runs here as SCRIPT INTERNAL_STATUS EXIT_STATUS (internal status: 0 exited, 1 could not be started, 2 killed by a signal, 3 timed out, 4 cancelled, 5 lost, 6 failed (only in-process tasks of an embedding daemon); exit status as above), with this client's environment plus:",
        items: &[
            ("CQ_JOB_ID", "the job's id on the server"),
            (
                "CQ_OUTCOME",
                "exited, signaled, spawn-failed, timed-out, cancelled or lost",
            ),
            ("CQ_EXIT_STATUS", "the same as the second argument"),
            (
                "CQ_SIGNAL",
                "the signal number that killed the command, empty otherwise",
            ),
            ("CQ_DURATION", "run time in seconds, e.g. 12.345"),
            ("CQ_SERVER", "the server as given, host:port"),
            ("CQ_COMMAND", "the command, quoted as a shell would take it"),
            (
                "CQ_ARGC, CQ_ARGV_0, CQ_ARGV_1, ...",
                "the number of words of the command, and each word",
            ),
            (
                "CQ_JOB_ENV_NAME",
                "each -E NAME=value of the job (with --wait, as the server shows them to you)",
            ),
            ("CQ_TAGS", "the job's tags, comma-separated"),
            (
                "CQ_MERGED",
                "1 if the submission was merged into an equal job already queued, else 0",
            ),
            (
                "CQ_RESULT_KEY",
                "each KEY=VALUE result the job wrote to its $CQ_RESULT_FILE",
            ),
        ],
    },
    Section {
        title: "ENVIRONMENT",
        intro: "",
        items: &[(
            "RUST_LOG",
            "overrides the log level set by -v (e.g. RUST_LOG=debug)",
        )],
    },
    Section {
        title: "FILES",
        intro: "",
        items: &[
            (
                "/etc/cq/cq.toml",
                "the [client] section sets defaults for where and how to reach the server, the post script, and pass_env (variables every job gets when set)",
            ),
            (
                "/etc/cq/tls/ca.pem, client.pem, client.key",
                "the CA and this client's certificate and key for --auth tls",
            ),
            (
                "/run/munge/munge.socket.2",
                "munged's socket, for --auth munge",
            ),
        ],
    },
    Section {
        title: "EXAMPLES",
        intro: "",
        items: &[
            (
                "cq_client -h buildhost -- emerge --buildpkgonly =dev-libs/foo-1.2",
                "run a build on buildhost and wait for it; exits as the build did",
            ),
            (
                "cq_client -h buildhost -E USE='-X' -P ./install.sh -- emerge -B foo",
                "pass a variable to the job, and run ./install.sh here when it ends",
            ),
            (
                "cq_client -h buildhost --detach -- make -C /srv/src",
                "queue a job, print its id and return",
            ),
            (
                "cq_client -h buildhost --wait 42 --follow",
                "wait for job 42, printing its output as it comes",
            ),
            (
                "cq_client -h buildhost --list",
                "the running job, the queue in order, and the recently finished jobs",
            ),
        ],
    },
    Section {
        title: "SEE ALSO",
        intro: "cq_server(1), munged(8). The README and SECURITY.md of cq say more: the security model, configuration, troubleshooting.",
        items: &[],
    },
];

pub(crate) const SERVER: &[Section] = &[
    Section {
        title: "SIGNALS",
        intro: "",
        items: &[
            (
                "SIGTERM, SIGINT",
                "stop accepting; the running job may finish within --shutdown-grace (its waiters hear its outcome), then is cancelled; a second signal cancels it at once. Queued jobs stay queued for the next start",
            ),
            (
                "SIGHUP",
                "reopen the log file, read the configuration's policy again (a broken file keeps the old one), reload the TLS user map and revocation list",
            ),
        ],
    },
    Section {
        title: "EXIT STATUS",
        intro: "",
        items: &[
            ("0", "stopped cleanly"),
            (
                "1",
                "could not start: a bad option or configuration, an unusable state directory, a missing munged or certificate; one line says what and what to do",
            ),
        ],
    },
    Section {
        title: "ENVIRONMENT",
        intro: "",
        items: &[("RUST_LOG", "overrides the log level set by -v")],
    },
    Section {
        title: "FILES",
        intro: "",
        items: &[
            (
                "/etc/cq/cq.toml",
                "configuration: [server], [policy], [jobs]",
            ),
            (
                "STATE_DIR/cq.db",
                "the durable queue (SQLite, mode 0600); STATE_DIR is /var/lib/cq as root",
            ),
            ("STATE_DIR/logs/ID.log", "each job's output (mode 0600)"),
            (
                "STATE_DIR/cq_server.pid",
                "the running server's pid, locked while it runs",
            ),
            (
                "/run/cq/results-*/job-ID/result",
                "CQ_RESULT_FILE, a FIFO the server reads while job ID runs: KEY=VALUE results for its waiters (STATE_DIR/results/ when jobs run as the server's user)",
            ),
            (
                "/etc/cq/tls/",
                "the CA, server certificate and key, crl.pem, for --auth tls (see cq_server-tls(1))",
            ),
        ],
    },
    Section {
        title: "EXAMPLES",
        intro: "",
        items: &[
            (
                "cq_server",
                "as root: listen on port 48005, authenticate with MUNGE, run each job as its requester",
            ),
            (
                "cq_server tls init --host buildhost; cq_server tls client vm1",
                "make a CA, the server's certificate, and a client certificate for --auth tls",
            ),
            (
                "cq_server --auth tls --tls-crl /etc/cq/tls/crl.pem",
                "serve clients with certificates, refusing revoked ones",
            ),
        ],
    },
    Section {
        title: "SEE ALSO",
        intro: "cq_client(1), cq_server-tls(1), munged(8), systemd.service(5). The README and SECURITY.md of cq say more: the security model, configuration, troubleshooting.",
        items: &[],
    },
];

pub(crate) const WORKER: &[Section] = &[
    Section {
        title: "HOW IT WORKS",
        intro: "cq_worker asks the coordinator (cq_server) for a job, runs it, streams its output back and reports how it ended; then asks again. It runs one job at a time, only jobs whose tags (cq_client --tag) it offers. The coordinator admits it only if its policy names the worker's user, and address, in [policy] workers (e.g. workers = [\"root@10.0.0.7\"]). Jobs run as the requester the coordinator names; this host's account database must give that user the same uid. While the coordinator cannot be reached, the running job goes on and its output waits in the spool directory; the worker reports it when the coordinator is back (within the coordinator's --worker-timeout, after which the job counts as lost).",
        items: &[],
    },
    Section {
        title: "SIGNALS",
        intro: "",
        items: &[(
            "SIGTERM, SIGINT",
            "stop the running job (SIGTERM, then SIGKILL after --kill-grace), report its end, and exit",
        )],
    },
    Section {
        title: "EXIT STATUS",
        intro: "",
        items: &[
            ("0", "stopped by a signal"),
            (
                "1",
                "could not start, or the coordinator refuses this worker (its policy does not name it, or another worker holds the name); one line says what and what to do",
            ),
        ],
    },
    Section {
        title: "FILES",
        intro: "",
        items: &[
            (
                "/etc/cq/cq.toml",
                "configuration: [worker] holds defaults for the options",
            ),
            (
                "/var/lib/cq-worker/ID.log",
                "output of running job ID until the coordinator has it (as root; --spool)",
            ),
        ],
    },
    Section {
        title: "EXAMPLES",
        intro: "",
        items: &[
            (
                "cq_worker -h coordinator --tag arch=arm64",
                "as root on an arm64 build host: run the coordinator's jobs tagged arch=arm64 (and untagged ones)",
            ),
            (
                "cq_worker -h coordinator --auth tls --tls-cert /etc/cq/tls/worker.pem --tls-key /etc/cq/tls/worker.key",
                "authenticate with a certificate (cq_server tls client NAME makes one) instead of MUNGE",
            ),
        ],
    },
    Section {
        title: "SEE ALSO",
        intro: "cq_server(1), cq_client(1), munged(8). The README (Several build hosts) and SECURITY.md of cq say more.",
        items: &[],
    },
];
