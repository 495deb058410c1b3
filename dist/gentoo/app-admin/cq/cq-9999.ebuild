# Copyright 2026 cq authors
# Distributed under the terms of the MIT license or the Apache License 2.0

EAPI=8

# The workspace's rust-version (Cargo.toml).
RUST_MIN_VER="1.89.0"

inherit cargo git-r3 systemd shell-completion

DESCRIPTION="Command queue: many hosts submit, one build host runs strictly one at a time"
HOMEPAGE="https://example.invalid/cq"
EGIT_REPO_URI="https://example.invalid/cq.git"

LICENSE="|| ( MIT Apache-2.0 )"
# Dependent crate licenses (as cargo-license reports them for Cargo.lock).
LICENSE+=" Apache-2.0 BSD ISC MIT Unicode-3.0 Unlicense ZLIB"
SLOT="0"
# TLS (rustls, mutual certificates) is always built; MUNGE is optional.
IUSE="+munge"

DEPEND="munge? ( sys-auth/munge )"
RDEPEND="${DEPEND}"

# cq_server makes a cgroup per job below its own (systemd: Delegate=yes).
CONFIG_CHECK="~CGROUPS"

src_unpack() {
	git-r3_src_unpack
	cargo_live_src_unpack
}

src_configure() {
	local myfeatures=( $(usev munge) )
	cargo_src_configure --no-default-features --package cq-bin
}

src_install() {
	local bin
	for bin in cq_server cq_client cq_worker cq-emerge cq-emerge-build; do
		dobin "$(cargo_target_dir)/${bin}"
	done

	doman dist/man/*.1
	dobashcomp dist/completions/cq_server.bash dist/completions/cq_client.bash \
		dist/completions/cq_worker.bash
	dozshcomp dist/completions/_cq_server dist/completions/_cq_client \
		dist/completions/_cq_worker
	dofishcomp dist/completions/cq_server.fish dist/completions/cq_client.fish \
		dist/completions/cq_worker.fish

	insinto /etc/cq
	doins dist/cq.toml
	keepdir /etc/cq/tls

	systemd_dounit dist/systemd/cq_server.service dist/systemd/cq_worker.service
	newinitd dist/openrc/init.d/cq_server cq_server
	newconfd dist/openrc/conf.d/cq_server cq_server
	newinitd dist/openrc/init.d/cq_worker cq_worker
	newconfd dist/openrc/conf.d/cq_worker cq_worker

	insinto /etc/logrotate.d
	newins dist/logrotate/cq_server cq_server

	keepdir /var/lib/cq
	keepdir /var/lib/cq-worker
	fperms 0700 /var/lib/cq

	dodoc README.md SECURITY.md
}

pkg_postinst() {
	elog "Build host: allow only cq-emerge-build in /etc/cq/cq.toml ([policy] commands),"
	elog "set FEATURES=\"buildpkg binpkg-multi-instance\" and share PKGDIR with the VMs."
	elog "VMs: cq-emerge --server BUILDHOST -uDN @world (see README, Gentoo: cq-emerge)."
	use munge && elog "MUNGE: every host needs the same /etc/munge/munge.key and munged running."
}
