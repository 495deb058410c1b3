//! cq-emerge-build =CATEGORY/PF: the build host's side of cq-emerge (see cq_bin::emerge::build).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cq_bin::emerge::build::build(&args) {
        Ok(built) => {
            let id = built
                .instance
                .build_id
                .map(|id| format!(", build id {id}"))
                .unwrap_or_default();
            println!(
                "cq-emerge-build: built {}{id}: {}",
                built.cpv,
                built.instance.path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cq-emerge-build: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
