//! Generated files under `dist/`: man pages and shell completions, made from the clap
//! definitions of both programs so that they cannot drift from the real options.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

/// Every generated file: its path under `dist/` and its contents.
pub fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for command in [
        cq_bin::server_args::Args::command(),
        cq_bin::client_run::Args::command(),
    ] {
        let name = command.get_name().to_owned();
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone())
            .render(&mut page)
            .expect("rendering to memory cannot fail");
        files.push((PathBuf::from(format!("man/{name}.1")), page));
        for (shell, file) in [
            (Shell::Bash, format!("completions/{name}.bash")),
            (Shell::Zsh, format!("completions/_{name}")),
            (Shell::Fish, format!("completions/{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), &name, &mut script);
            files.push((PathBuf::from(file), script));
        }
    }
    files
}

/// The `dist/` directory of this checkout.
pub fn dist_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist")
}
