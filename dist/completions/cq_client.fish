complete -c cq_client -l config -d 'Configuration file; its [client] section sets defaults for the options that name a server and how to reach it [default: /etc/cq/cq.toml if it exists]' -r -F
complete -c cq_client -s h -l host -d 'Server host' -r
complete -c cq_client -s p -l port -d 'Server port' -r
complete -c cq_client -s P -l post-script -d 'Script run here when the job ended, with arguments INTERNAL_STATUS EXIT_STATUS and CQ_* variables' -r -F
complete -c cq_client -s E -l env -d 'Set NAME=VALUE for the job, or copy NAME from this environment; repeatable' -r
complete -c cq_client -l auth -d 'Authentication method; both ends must use the same' -r -f -a "munge\t'MUNGE credentials (shared key on all hosts; needs munged)'
tls\t'Mutual TLS (client certificates signed by the cq CA)'
local\t'This host only, over a Unix socket (--socket): the kernel says who connected, so neither munged nor certificates are needed'"
complete -c cq_client -l munge-socket -d 'munged\'s socket [default: libmunge\'s, usually /run/munge/munge.socket.2]' -r -F
complete -c cq_client -l tls-ca -d 'CA certificate (PEM) for --auth tls [default: /etc/cq/tls/ca.pem]' -r -F
complete -c cq_client -l socket -d 'Unix socket for this host\'s clients (cq_server serves it, next to TCP unless --auth local; cq_client connects to it) [default with --auth local: /run/cq/cq.sock as root, else $XDG_RUNTIME_DIR/cq/cq.sock]' -r -F
complete -c cq_client -l server-uid -d 'With --auth munge: uid the server must run as for its replies to be believed; repeatable [default: 0 and this user\'s uid]' -r
complete -c cq_client -l tls-server-name -d 'With --auth tls: the name the server\'s certificate must carry [default: the host]' -r
complete -c cq_client -l wait -d 'Wait for the existing job ID instead of submitting one, then behave as if it had been submitted here (post script, exit status)' -r
complete -c cq_client -l retry -d 'Submit your finished job ID again as a new job: the same command, `-E` variables and working directory (time limit: --timeout or the server\'s default), then behave as any submission (post script, --detach, exit status)' -r
complete -c cq_client -l background-log -d 'Log of the background waiter [default: cq_client-job-ID.log in $XDG_STATE_HOME/cq or ~/.local/state/cq, root\'s too]' -r -F
complete -c cq_client -l reconnect-timeout -d 'Seconds to keep re-attaching to the job while the server is unreachable' -r
complete -c cq_client -l cwd -d 'Working directory of the job on the server (entered with your rights there) [default: the server\'s, usually /]' -r
complete -c cq_client -l tag -d 'Run the job only on a worker that offers TAG (repeat: all of them), e.g. --tag arch=arm64 to build on the coordinator\'s arm64 build host' -r
complete -c cq_client -l lane -d 'Never run the job at the same time as another job of lane NAME, on any worker (e.g. every build that writes one shared PKGDIR)' -r
complete -c cq_client -l timeout -d 'Kill the job (all its processes) if it runs longer than this (e.g. 90s, 2h); the server may set a default and a maximum' -r
complete -c cq_client -l user -d 'With --list: only the jobs of user NAME' -r
complete -c cq_client -l state -d 'With --list: only jobs in this state (repeatable)' -r -f -a "queued\t'Waiting for its turn'
running\t'Running now'
finished\t'Ended'"
complete -c cq_client -l status -d 'Show one job' -r
complete -c cq_client -l cancel -d 'Cancel a job: a queued one leaves the queue, a running one\'s process group gets SIGTERM, then SIGKILL. Its owner and the admins may' -r
complete -c cq_client -l log -d 'Print a job\'s output so far (its owner and the admins may)' -r
complete -c cq_client -l first -d 'Move queued job ID ahead of every other queued job (until the server restarts). Admins only' -r
complete -c cq_client -l tail -d 'When the job fails, print the last N lines of its output [default: 10 when standard error is a terminal, else 0]; 0 prints none' -r
complete -c cq_client -l tls-cert -d 'This client\'s certificate (PEM) for --auth tls [default: /etc/cq/tls/client.pem]' -r -F
complete -c cq_client -l tls-key -d 'This client\'s private key (PEM) for --auth tls [default: /etc/cq/tls/client.key]' -r -F
complete -c cq_client -l detach -d 'Print the job id once the job is accepted (it is then on the server\'s disk) and exit without waiting'
complete -c cq_client -l background -d 'Once the job is accepted, keep waiting in the background (detached from the terminal, output to --background-log) and exit at once'
complete -c cq_client -l new-session -d 'Internal: start a new session first (used by the --background waiter)'
complete -c cq_client -l list -d 'List the running job, the queued ones in order and the recently finished ones'
complete -c cq_client -l mine -d 'With --list: only your jobs (by user name)'
complete -c cq_client -l pause -d 'Pause the server\'s queue: running jobs finish, nothing new starts (submissions are still taken). Admins only'
complete -c cq_client -l resume -d 'Resume a paused queue. Admins only'
complete -c cq_client -l workers -d 'List the workers on other hosts (cq_worker) that have joined the server: their tags, the job each runs, when each was last heard of (and, for admins, its address)'
complete -c cq_client -l follow -d 'While waiting, print the job\'s output as it comes (from its start); with --log, keep printing until the job ends'
complete -c cq_client -l raw -d 'With --log and --follow: pass control characters to the terminal as they are (by default, when standard output is a terminal, all but newline and tab are shown escaped, so that a job\'s output cannot rewrite your screen)'
complete -c cq_client -l json -d 'Print --list, --status and --cancel answers as JSON; when waiting for a job, print how it ended (outcome, exit status, results) as a JSON object'
complete -c cq_client -s q -l quiet -d 'Print nothing but errors'
complete -c cq_client -s v -l verbose -d 'More log output (repeat for more); RUST_LOG overrides'
complete -c cq_client -l help -d 'Print help'
complete -c cq_client -s V -l version -d 'Print version'
