//! cq-emerge: builds what emerge would merge on the build host, installs it here.

use std::process::ExitCode;

use cq_bin::config_file::ConfigFile;
use cq_bin::emerge::{USAGE, complete, parse_args, portage_variable, run::run};

fn main() -> ExitCode {
    let cli = match parse_args(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("cq-emerge: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if cli.version {
        println!("cq-emerge {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if cli.options.emerge_args.is_empty() {
        eprintln!(
            "cq-emerge: name what to merge, e.g. cq-emerge -uDN @world (see cq-emerge --help)"
        );
        return ExitCode::from(2);
    }
    let config = match ConfigFile::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cq-emerge: {e} (fix the file, or give another with --config)");
            return ExitCode::from(2);
        }
    };
    let section = config
        .as_ref()
        .map(|c| c.emerge().clone())
        .unwrap_or_default();
    let options = complete(cli, &section, portage_variable);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cq-emerge: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    ExitCode::from(runtime.block_on(run(&options)))
}
