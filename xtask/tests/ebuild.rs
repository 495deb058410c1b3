//! The Gentoo ebuild (`dist/gentoo/app-admin/cq/`) installs what the project ships, and is
//! well-formed as far as can be checked offline: bash syntax, XML of its metadata.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ebuild() -> (PathBuf, String) {
    let path = root().join("dist/gentoo/app-admin/cq/cq-9999.ebuild");
    let text = std::fs::read_to_string(&path).expect("the ebuild");
    (path, text)
}

#[test]
fn the_ebuild_installs_every_program_and_every_file_of_dist() {
    let (_, text) = ebuild();
    let mut programs: Vec<String> = std::fs::read_dir(root().join("cq-bin/src/bin"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    programs.sort();
    let install_loop = text
        .lines()
        .find(|l| l.trim_start().starts_with("for bin in"))
        .expect("a loop over the programs");
    for program in &programs {
        assert!(
            install_loop
                .split_whitespace()
                .any(|w| w.trim_end_matches(';') == program),
            "the ebuild does not install {program}"
        );
    }
    // Every file it names exists; every completion is named.
    for word in text.split_whitespace().filter(|w| w.starts_with("dist/")) {
        if let Some(dir) = word.strip_suffix("/*.1") {
            let pages = std::fs::read_dir(root().join(dir)).unwrap().count();
            assert!(pages > 0, "{word} matches nothing");
        } else {
            assert!(root().join(word).is_file(), "{word} does not exist");
        }
    }
    for entry in std::fs::read_dir(root().join("dist/completions")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            text.contains(&format!("dist/completions/{name}")),
            "the ebuild does not install the completion {name}"
        );
    }
    for file in [
        "dist/systemd/",
        "dist/openrc/init.d/",
        "dist/openrc/conf.d/",
        "dist/logrotate/",
        "dist/cq.toml",
    ] {
        assert!(text.contains(file), "the ebuild does not install {file}");
    }
}

#[test]
fn the_ebuild_parses_and_its_metadata_is_well_formed_xml() {
    let (path, _) = ebuild();
    let bash = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        bash.status.success(),
        "{}",
        String::from_utf8_lossy(&bash.stderr)
    );
    let metadata = path.with_file_name("metadata.xml");
    let xml = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])",
        ])
        .arg(&metadata)
        .output()
        .expect("python3 (.ci/install-deps installs it)");
    assert!(
        xml.status.success(),
        "{}",
        String::from_utf8_lossy(&xml.stderr)
    );
}
