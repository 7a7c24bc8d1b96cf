//! `switchyard-worker`: the worker binary with the built-in apps.

use std::process::ExitCode;

use clap::Parser;
use switchyard_cli::{logging, signals};
use switchyard_worker::{apps, runtime, WorkerConfig};

fn main() -> ExitCode {
    let config = WorkerConfig::parse();
    let checked = config
        .validate()
        .and_then(|()| apps::chat::heartbeat_every().map(|_| ()));
    if let Err(error) = checked {
        eprintln!("switchyard-worker: {error:#}");
        return ExitCode::from(2);
    }
    let apps = apps::builtin();
    if config.check {
        let served = runtime::select(&config, &apps)
            .map(|(channels, _)| channels.into_iter().map(|(c, _)| c).collect::<Vec<_>>());
        println!("{:#?}\nchannels served: {served:?}", config.redacted());
        return ExitCode::SUCCESS;
    }
    logging::init(config.log_format);
    runtime::install_panic_hook();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchyard-worker: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if config.seed_display_demo {
        runtime.block_on(apps::display::seed::seed_at_start(&config));
    }
    let served = runtime.block_on(async {
        // Installed before anything starts, so an early SIGTERM is not lost.
        let stop = signals::stop_requested()?;
        runtime::run(config, apps, stop).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchyard-worker: {error:#}");
            ExitCode::from(2)
        }
    }
}
