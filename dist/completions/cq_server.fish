# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_cq_server_global_optspecs
    string join \n config= h/host= p/port= state-dir= auth= munge-socket= tls-ca= socket= tls-user-map= tls-crl= allow-root run-as= daemon daemon-child pid-file= log= handshake-timeout= max-connections= max-connections-per-host= max-queued-jobs= max-queued-bytes= max-log-bytes= kill-grace= shutdown-grace= retention-days= requeue-lost paused no-local-worker worker-timeout= dedup= submit-hook= submit-hook-timeout= submit-hook-fallback= submit-hook-user= metrics= notice-hook= notice-hook-timeout= notice-hook-user= executor= lanes= partition= slurm-conf= slurm-output-dir= sbatch-arg= slurm-bin-dir= slurm-poll= log-limit= default-timeout= max-timeout= v/verbose help tls-cert= tls-key= V/version
end

function __fish_cq_server_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_cq_server_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_cq_server_using_subcommand
    set -l cmd (__fish_cq_server_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c cq_server -n "__fish_cq_server_needs_command" -l config -d 'Configuration file: server options under [server], the policy under [policy], the jobs\' base environment under [jobs] [default: /etc/cq/cq.toml if it exists]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -s h -l host -d 'Address to listen on' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -s p -l port -d 'Port to listen on (0 picks a free one; the log says which)' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l state-dir -d 'Directory for the job database and logs [default: /var/lib/cq for root, else ~/.local/state/cq]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l auth -d 'Authentication method; both ends must use the same' -r -f -a "munge\t'MUNGE credentials (shared key on all hosts; needs munged)'
tls\t'Mutual TLS (client certificates signed by the cq CA)'
local\t'This host only, over a Unix socket (--socket): the kernel says who connected, so neither munged nor certificates are needed'"
complete -c cq_server -n "__fish_cq_server_needs_command" -l munge-socket -d 'munged\'s socket [default: libmunge\'s, usually /run/munge/munge.socket.2]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l tls-ca -d 'CA certificate (PEM) for --auth tls [default: /etc/cq/tls/ca.pem]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l socket -d 'Unix socket for this host\'s clients (cq_server serves it, next to TCP unless --auth local; cq_client connects to it) [default with --auth local: /run/cq/cq.sock as root, else $XDG_RUNTIME_DIR/cq/cq.sock]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l tls-user-map -d 'With --auth tls: file mapping certificate names to local users [default: the certificate name is the user name]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l tls-crl -d 'With --auth tls: a certificate revocation list (PEM, signed by the CA, e.g. from `cq_server tls revoke`); revoked client certificates are refused, and so are the queued jobs submitted with them. Read again, with the user map, on SIGHUP' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l run-as -d 'Whose rights jobs run with [default: requester when cq_server runs as root, else server]. With server, only cq_server\'s own user may submit unless the policy names others (whose jobs then run with cq_server\'s rights)' -r -f -a "requester\t'The requesting user (uid, and the groups and home of its account here); needs root'
server\t'The user cq_server runs as'"
complete -c cq_server -n "__fish_cq_server_needs_command" -l pid-file -d 'Also write the server\'s pid to FILE, locked while it runs (the state directory always has one: cq_server.pid)' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l log -d 'Where the server logs: stderr, syslog (or syslog:SOCKET), journald or file:PATH (reopened on SIGHUP) [default: stderr; syslog with --daemon]' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l handshake-timeout -d 'Seconds a new connection gets to say hello and send its request' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l max-connections -d 'Connections served at once; more are closed' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l max-connections-per-host -d 'Connections served at once from one host (an address; all of the loopback is one host; an IPv6 /64 gets 8 hosts\' share); more are closed' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l max-queued-jobs -d 'Jobs one user may have queued, running or waited for (a merge waits) (0: no limit)' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l max-queued-bytes -d 'Bytes of arguments and environment one user\'s queued jobs may hold (0: no limit)' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l max-log-bytes -d 'Bytes of job logs one user may have kept until they are pruned (0: no limit)' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l kill-grace -d 'Seconds between SIGTERM and SIGKILL when a job is cancelled' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l shutdown-grace -d 'Seconds the running job may still take after SIGTERM/SIGINT before it is cancelled' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l retention-days -d 'Days finished jobs (outcome and log) are kept for clients that ask late' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l worker-timeout -d 'Seconds a worker (cq_worker) may be out of touch before the job it runs counts as lost' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l dedup -d 'Merge a submission into an equal job (same command, environment, working directory and user) that is queued, or queued or running; the submitter waits for that job instead' -r -f -a "off\t'Never merge'
queued\t'Merge into queued jobs'
running\t'Merge into queued jobs and the running one'"
complete -c cq_server -n "__fish_cq_server_needs_command" -l submit-hook -d 'Program that decides about each submission (JSON on stdin and stdout; see README)' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l submit-hook-timeout -d 'Time the submit hook gets before it is killed and the fallback applies' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l submit-hook-fallback -d 'Decision when the submit hook fails, hangs or answers garbage (a hook is a policy: by default it fails closed)' -r -f -a "accept\t'Queue the job as if there were no hook'
reject\t'Refuse the job'"
complete -c cq_server -n "__fish_cq_server_needs_command" -l submit-hook-user -d 'User the submit hook runs as [default: nobody when cq_server runs as root, else cq_server\'s own user]' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l metrics -d 'Serve OpenMetrics (Prometheus) counters and gauges on http://ADDR/metrics (e.g. 127.0.0.1:9448); off by default. No job, user or command is named there' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l notice-hook -d 'Program run once for every finished job, with the job as JSON on stdin (mail, chat, webhooks); one at a time, its output ignored (see README)' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l notice-hook-timeout -d 'Time the notice program gets before it is killed' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l notice-hook-user -d 'User the notice program runs as [default: nobody when cq_server runs as root, else cq_server\'s own user]' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l executor -d 'What runs jobs: process (here) or slurm (a Slurm cluster, one batch job per job)' -r -f -a "process\t'Processes on this host (contained, as the requester)'
slurm\t'Slurm batch jobs, submitted as the requester (see --partition)'"
complete -c cq_server -n "__fish_cq_server_needs_command" -l lanes -d 'How many jobs run at once (each on a worker of its own, named NAME-2, NAME-3, ... after the first); with --executor slurm, how many Slurm jobs run side by side' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l partition -d 'With --executor slurm: the partition jobs go to [default: Slurm\'s default partition]' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l slurm-conf -d 'With --executor slurm: the Slurm configuration file [default: Slurm\'s own]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l slurm-output-dir -d 'With --executor slurm: where jobs\' output and results files go, a directory of this user\'s (mode 0711) that the compute nodes share with this host [default: /var/spool/cq-slurm as root, else slurm in the state directory or spool]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l sbatch-arg -d 'With --executor slurm: one more option for sbatch (repeat), e.g. --sbatch-arg=--mem=4G' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l slurm-bin-dir -d 'With --executor slurm: where sbatch, scontrol, scancel, squeue, sacct and sinfo are [default: the usual system directories]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l slurm-poll -d 'With --executor slurm: longest pause between two looks at a running job' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l log-limit -d 'Output kept per job (e.g. 64M); past it the log is cut, with a marker' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l default-timeout -d 'Time limit of jobs that ask for none (e.g. 6h) [default: none]' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l max-timeout -d 'Longest time limit a job may have; longer ones (and jobs without one) get this' -r
complete -c cq_server -n "__fish_cq_server_needs_command" -l tls-cert -d 'The server\'s certificate (PEM) for --auth tls [default: /etc/cq/tls/server.pem]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l tls-key -d 'The server\'s private key (PEM) for --auth tls [default: /etc/cq/tls/server.key]' -r -F
complete -c cq_server -n "__fish_cq_server_needs_command" -l allow-root -d 'Accept jobs from root (uid 0); they run as root. Also `allow_root = true` in [policy]'
complete -c cq_server -n "__fish_cq_server_needs_command" -l daemon -d 'Detach from the terminal and run in the background, once listening (errors before that are printed and make the command fail). Logs go to --log (default syslog)'
complete -c cq_server -n "__fish_cq_server_needs_command" -l daemon-child -d 'Internal: the background process of --daemon'
complete -c cq_server -n "__fish_cq_server_needs_command" -l requeue-lost -d 'Queue a job that was running when the server died again, instead of reporting it lost'
complete -c cq_server -n "__fish_cq_server_needs_command" -l paused -d 'Start with the queue paused (for maintenance): jobs are taken and wait until an admin runs cq_client --resume'
complete -c cq_server -n "__fish_cq_server_needs_command" -l no-local-worker -d 'Run no jobs on this host: a pure coordinator whose jobs all run on workers (cq_worker) that join it'
complete -c cq_server -n "__fish_cq_server_needs_command" -s v -l verbose -d 'More log output (repeat for more); RUST_LOG overrides'
complete -c cq_server -n "__fish_cq_server_needs_command" -l help -d 'Print help (also of the subcommands: `cq_server tls init --help`)'
complete -c cq_server -n "__fish_cq_server_needs_command" -s V -l version -d 'Print version'
complete -c cq_server -n "__fish_cq_server_needs_command" -f -a "tls" -d 'Certificate tooling for --auth tls'
complete -c cq_server -n "__fish_cq_server_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and not __fish_seen_subcommand_from init client revoke help" -l help -d 'Print help (also of the subcommands: `cq_server tls init --help`)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and not __fish_seen_subcommand_from init client revoke help" -f -a "init" -d 'Create a CA and a server certificate in DIR (ca.pem, ca.key, server.pem, server.key)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and not __fish_seen_subcommand_from init client revoke help" -f -a "client" -d 'Issue a client certificate for NAME (a local user name on the server, or a name the server\'s --tls-user-map maps to one), signed by the CA in --dir'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and not __fish_seen_subcommand_from init client revoke help" -f -a "revoke" -d 'Revoke a client certificate: add it to the revocation list DIR/crl.pem, which cq_server --tls-crl reads (again on SIGHUP)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and not __fish_seen_subcommand_from init client revoke help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from init" -l host -d 'A name clients use to reach the server (DNS name or IP address); repeatable' -r
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from init" -l force -d 'Replace the server\'s certificate and key; an existing CA is kept (the client certificates it signed stay valid)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from init" -l new-ca -d 'With --force: make a new CA too (every client certificate must then be issued again)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from init" -l help -d 'Print help (also of the subcommands: `cq_server tls init --help`)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from client" -l dir -d 'Directory holding ca.pem and ca.key' -r -F
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from client" -l out -d 'Directory for NAME.pem and NAME.key [default: --dir] (created mode 0700; an existing one must be yours and writable by nobody else)' -r -F
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from client" -l force -d 'Replace existing files'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from client" -l help -d 'Print help (also of the subcommands: `cq_server tls init --help`)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from revoke" -l dir -d 'Directory holding ca.pem and ca.key (and crl.pem)' -r -F
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from revoke" -l help -d 'Print help (also of the subcommands: `cq_server tls init --help`)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from help" -f -a "init" -d 'Create a CA and a server certificate in DIR (ca.pem, ca.key, server.pem, server.key)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from help" -f -a "client" -d 'Issue a client certificate for NAME (a local user name on the server, or a name the server\'s --tls-user-map maps to one), signed by the CA in --dir'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from help" -f -a "revoke" -d 'Revoke a client certificate: add it to the revocation list DIR/crl.pem, which cq_server --tls-crl reads (again on SIGHUP)'
complete -c cq_server -n "__fish_cq_server_using_subcommand tls; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cq_server -n "__fish_cq_server_using_subcommand help; and not __fish_seen_subcommand_from tls help" -f -a "tls" -d 'Certificate tooling for --auth tls'
complete -c cq_server -n "__fish_cq_server_using_subcommand help; and not __fish_seen_subcommand_from tls help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cq_server -n "__fish_cq_server_using_subcommand help; and __fish_seen_subcommand_from tls" -f -a "init" -d 'Create a CA and a server certificate in DIR (ca.pem, ca.key, server.pem, server.key)'
complete -c cq_server -n "__fish_cq_server_using_subcommand help; and __fish_seen_subcommand_from tls" -f -a "client" -d 'Issue a client certificate for NAME (a local user name on the server, or a name the server\'s --tls-user-map maps to one), signed by the CA in --dir'
complete -c cq_server -n "__fish_cq_server_using_subcommand help; and __fish_seen_subcommand_from tls" -f -a "revoke" -d 'Revoke a client certificate: add it to the revocation list DIR/crl.pem, which cq_server --tls-crl reads (again on SIGHUP)'
