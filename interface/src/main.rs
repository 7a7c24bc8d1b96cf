//! `switchyard-interface`: parses flags, checks them, and runs the server.

use std::process::ExitCode;

use clap::Parser;
use switchyard_cli::{logging, signals};
use switchyard_interface::config::Config;

fn main() -> ExitCode {
    // Before the limits are derived from it (`--max-connections`' default).
    switchyard_interface::front::admission::raise_open_files_limit();
    let config = Config::parse();
    if let Err(error) = config.validate() {
        eprintln!("switchyard-interface: {error:#}");
        return ExitCode::from(2);
    }
    if config.check {
        println!("{:#?}", config.redacted());
        println!(
            "effective max connections: {}",
            switchyard_interface::describe_limit(config.effective_max_connections())
        );
        if let Ok((websocket, http)) = config.route_tables() {
            println!("effective routes:");
            for (kind, routes) in [("websocket", &websocket), ("http", &http)] {
                for target in routes.iter() {
                    println!("  {} -> channel {} ({kind})", target.prefix, target.channel);
                }
            }
            for mount in config.static_mounts() {
                println!("  {} -> static {}", mount.prefix, mount.dir.display());
            }
        }
        return ExitCode::SUCCESS;
    }
    logging::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchyard-interface: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        // Installed before the port opens, so an early SIGTERM is not lost.
        let stop = signals::stop_requested()?;
        let listener = switchyard_interface::bind(&config)?;
        switchyard_interface::run(config, listener, stop).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("switchyard-interface: {error:#}");
            ExitCode::FAILURE
        }
    }
}
