//! Generated files under `dist/`: man pages and shell completions, made from the clap
//! definitions of the programs so that they cannot drift from the real options, plus the
//! sections an option list cannot say (exit status, post scripts, files, examples).

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

mod pages;

/// Every generated file: its path under `dist/` and its contents.
pub fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for (command, extra) in [
        (cq_bin::server_args::Args::command(), pages::SERVER),
        (cq_bin::client_run::Args::command(), pages::CLIENT),
        (cq_bin::worker_run::Args::command(), pages::WORKER),
    ] {
        let name = command.get_name().to_owned();
        man_pages(&command, extra, &mut files);
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

/// The page of `command`, with the `extra` sections, and one page per subcommand
/// (`cq_server-tls.1`, `cq_server-tls-init.1`, ...), which the pages name.
fn man_pages(
    command: &clap::Command,
    extra: &[pages::Section],
    files: &mut Vec<(PathBuf, Vec<u8>)>,
) {
    let mut command = command.clone();
    command.build();
    let name = command.get_name().to_owned();
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    let rendered = man
        .render_title(&mut page)
        .and_then(|()| man.render_name_section(&mut page))
        .and_then(|()| man.render_synopsis_section(&mut page))
        .and_then(|()| man.render_description_section(&mut page))
        .and_then(|()| man.render_options_section(&mut page))
        .and_then(|()| {
            if command.has_subcommands() {
                man.render_subcommands_section(&mut page)
            } else {
                Ok(())
            }
        });
    rendered.expect("rendering to memory cannot fail");
    for section in extra {
        page.extend_from_slice(pages::roff(section).as_bytes());
    }
    man.render_version_section(&mut page)
        .expect("rendering to memory cannot fail");
    files.push((PathBuf::from(format!("man/{name}.1")), page));
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let sub = sub
            .clone()
            .name(format!("{name}-{}", sub.get_name()))
            .version(command.get_version().unwrap_or_default().to_owned());
        man_pages(&sub, &[], files);
    }
}

/// The `dist/` directory of this checkout.
pub fn dist_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist")
}
