//! secop-gateway: the command line. Everything else is the library (`secop_gateway::app`
//! starts a gateway).

mod cli;

use clap::Parser;
use cli::{Cli, Command};
use secop_gateway::{app, config, discovery};
use std::process::ExitCode;

/// mimalloc instead of the system allocator: requests, replies and updates are many
/// small, short-lived allocations, which glibc's malloc serves markedly slower
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    abort_on_panic();
    let cli = Cli::parse();
    let loaded = match config::load(cli.config.as_deref(), cli.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("secop-gateway: configuration error:\n{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.log_level.as_deref().unwrap_or(&loaded.config.log.level));
    match cli.command.unwrap_or(Command::Run) {
        Command::Discover { target, wait, json } => {
            if let Err(e) = (secop_drivers::limits::Seconds {
                min: 0.05,
                max: 3600.0,
            })
            .check("--wait", wait)
            {
                eprintln!("secop-gateway: {e}");
                return ExitCode::from(2);
            }
            // By default: this host, and the addresses the config announces to (where
            // an operator listed the LAN's broadcast address).
            let targets = if target.is_empty() {
                let mut t = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 10767))];
                for a in &loaded.config.discovery.announce {
                    if let Ok(a) = a.parse() {
                        if !t.contains(&a) {
                            t.push(a);
                        }
                    }
                }
                t
            } else {
                target
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("secop-gateway: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(discovery::discover(
                &targets,
                secop_drivers::limits::duration(wait),
            )) {
                Ok(found) => {
                    for (from, node) in &found {
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({"from": from.to_string(), "node": node})
                            );
                        } else {
                            println!(
                                "{}:{}\t{}\t{}\t{}",
                                from.ip(),
                                node["port"],
                                node["equipment_id"].as_str().unwrap_or(""),
                                node["firmware"].as_str().unwrap_or(""),
                                node["description"]
                                    .as_str()
                                    .unwrap_or("")
                                    .lines()
                                    .next()
                                    .unwrap_or("")
                            );
                        }
                    }
                    eprintln!("{} node(s) found", found.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("secop-gateway: discovery failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { expanded } => {
            if expanded {
                println!(
                    "# {} with its templates expanded (environment overrides not applied)\n",
                    loaded.origin
                );
                print!("{}", loaded.expanded);
            } else {
                let description = loaded.description().to_json();
                let pretty = serde_json::to_string_pretty(&description).unwrap_or_default();
                println!("{pretty}");
            }
            for i in &loaded.instances {
                let file = i
                    .file
                    .as_ref()
                    .map(|f| format!(" ({})", f.display()))
                    .unwrap_or_default();
                let args = match i.args.is_empty() {
                    true => String::new(),
                    false => format!(": {}", i.args),
                };
                eprintln!(
                    "module {:?} from template {:?}{file}{args}",
                    i.name, i.template
                );
            }
            eprintln!(
                "access rules of node {:?} (first match wins):\n{}",
                loaded.config.node.equipment_id,
                loaded.access_rules(None)
            );
            for (i, n) in loaded.config.extra_nodes.iter().enumerate() {
                eprintln!(
                    "access rules of node {:?} (first match wins):\n{}",
                    n.equipment_id,
                    loaded.access_rules(Some(i))
                );
            }
            eprintln!("{}: configuration is valid", loaded.origin);
            ExitCode::SUCCESS
        }
        Command::Run => {
            let system = actix::System::new();
            match system.block_on(app::run(loaded, cli.ready_file, cli.listen)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once, on stderr, where the log goes too.
                    eprintln!("secop-gateway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into a log file or journal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// A panic anywhere ends the process (after the usual message): an actor that died
/// would otherwise leave a listener that accepts and never answers, while health checks
/// and the watchdog see a running process. systemd's `Restart=on-failure` starts it
/// again.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("panic: {info}; ending the process");
        std::process::abort();
    }));
}
