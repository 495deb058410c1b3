//! `cargo xtask dist`: writes the man pages and shell completions into `dist/`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("dist") => {
            let dist = xtask::dist_dir();
            for (path, contents) in xtask::generated() {
                let path = dist.join(path);
                let written = path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(&path, contents));
                if let Err(e) = written {
                    eprintln!("xtask: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: cargo xtask dist   (man pages and completions into dist/)");
            ExitCode::from(2)
        }
    }
}
