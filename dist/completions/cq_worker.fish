complete -c cq_worker -l config -d 'Configuration file; its [worker] section holds defaults for these options [default: /etc/cq/cq.toml if it exists]' -r -F
complete -c cq_worker -s h -l host -d 'The coordinator\'s host' -r
complete -c cq_worker -s p -l port -d 'The coordinator\'s port' -r
complete -c cq_worker -l name -d 'This worker\'s name, unique among the coordinator\'s workers [default: the host name]' -r
complete -c cq_worker -l tag -d 'What this worker offers (repeat): it runs only jobs whose tags it has all of, e.g. --tag arch=amd64 --tag profile=desktop' -r
complete -c cq_worker -l auth -d 'Authentication method; both ends must use the same' -r -f -a "munge\t'MUNGE credentials (shared key on all hosts; needs munged)'
tls\t'Mutual TLS (client certificates signed by the cq CA)'
local\t'This host only, over a Unix socket (--socket): the kernel says who connected, so neither munged nor certificates are needed'"
complete -c cq_worker -l munge-socket -d 'munged\'s socket [default: libmunge\'s, usually /run/munge/munge.socket.2]' -r -F
complete -c cq_worker -l tls-ca -d 'CA certificate (PEM) for --auth tls [default: /etc/cq/tls/ca.pem]' -r -F
complete -c cq_worker -l socket -d 'Unix socket for this host\'s clients (cq_server serves it, next to TCP unless --auth local; cq_client connects to it) [default with --auth local: /run/cq/cq.sock as root, else $XDG_RUNTIME_DIR/cq/cq.sock]' -r -F
complete -c cq_worker -l server-uid -d 'With --auth munge: uid the coordinator must run as for its answers to be believed (repeatable) [default: 0]' -r
complete -c cq_worker -l tls-server-name -d 'With --auth tls: the name the coordinator\'s certificate must carry [default: the host]' -r
complete -c cq_worker -l spool -d 'Where running jobs\' output waits until the coordinator has it; must be this user\'s and private [default: /var/lib/cq-worker as root, else ~/.local/state/cq/worker]' -r -F
complete -c cq_worker -l heartbeat -d 'Longest time between two reports while a job runs (keep it well under the coordinator\'s --worker-timeout); a cancel reaches a quiet job within it' -r
complete -c cq_worker -l executor -d 'What runs jobs: process (here) or slurm (a Slurm cluster, one batch job per job)' -r -f -a "process\t'Processes on this host (contained, as the requester)'
slurm\t'Slurm batch jobs, submitted as the requester (see --partition)'"
complete -c cq_worker -l lanes -d 'How many jobs run at once (each on a worker of its own, named NAME-2, NAME-3, ... after the first); with --executor slurm, how many Slurm jobs run side by side' -r
complete -c cq_worker -l partition -d 'With --executor slurm: the partition jobs go to [default: Slurm\'s default partition]' -r
complete -c cq_worker -l slurm-conf -d 'With --executor slurm: the Slurm configuration file [default: Slurm\'s own]' -r -F
complete -c cq_worker -l slurm-output-dir -d 'With --executor slurm: where jobs\' output and results files go, a directory of this user\'s (mode 0711) that the compute nodes share with this host [default: /var/spool/cq-slurm as root, else slurm in the state directory or spool]' -r -F
complete -c cq_worker -l sbatch-arg -d 'With --executor slurm: one more option for sbatch (repeat), e.g. --sbatch-arg=--mem=4G' -r
complete -c cq_worker -l slurm-bin-dir -d 'With --executor slurm: where sbatch, scontrol, scancel, squeue, sacct and sinfo are [default: the usual system directories]' -r -F
complete -c cq_worker -l slurm-poll -d 'With --executor slurm: longest pause between two looks at a running job' -r
complete -c cq_worker -l kill-grace -d 'Seconds between SIGTERM and SIGKILL when a job is stopped' -r
complete -c cq_worker -l tls-cert -d 'This worker\'s certificate (PEM) for --auth tls [default: /etc/cq/tls/worker.pem]' -r -F
complete -c cq_worker -l tls-key -d 'This worker\'s private key (PEM) for --auth tls [default: /etc/cq/tls/worker.key]' -r -F
complete -c cq_worker -l allow-root-jobs -d 'Run jobs as root, or as this worker\'s own user when the coordinator names nobody (a coordinator that does not switch users): off, a root worker runs jobs only as their requesters'
complete -c cq_worker -s v -l verbose -d 'More log output (repeat for more); RUST_LOG overrides'
complete -c cq_worker -l help -d 'Print help'
complete -c cq_worker -s V -l version -d 'Print version'
