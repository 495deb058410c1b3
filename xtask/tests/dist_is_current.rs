//! The committed man pages and completions match the options as they are now.

#[test]
fn dist_matches_the_clap_definitions() {
    let dist = xtask::dist_dir();
    for (path, expected) in xtask::generated() {
        let actual = std::fs::read(dist.join(&path)).unwrap_or_default();
        assert!(
            actual == expected,
            "dist/{} is out of date: run `cargo xtask dist` and commit the result",
            path.display()
        );
    }
}
