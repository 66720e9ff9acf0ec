//! `hio-host run GUEST.wasm`: serve a guest component.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use hio_host::Config;
use hio_host::config::file;

#[derive(Parser)]
#[command(name = "hio-host", version, about = "Serve TCP with hio's Server logic running in a sandboxed wasm guest")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Say whether GUEST fits this host (its imports and exports), without serving.
    Check {
        /// The guest component (.wasm).
        guest: PathBuf,
    },
    /// Open the listen socket and serve connections with GUEST's policy.
    /// SIGHUP re-reads GUEST (and the TLS files) and hot-swaps it in;
    /// SIGINT/SIGTERM drain and exit. Every flag can also be set by an
    /// HIO_* environment variable (--drain-timeout: HIO_DRAIN_TIMEOUT) or
    /// a --config file; flags win over the environment, which wins over the file.
    Run(Box<RunArgs>),
    /// Write a new guest at PATH. Rust: a crate with a policy (src/lib.rs),
    /// its tests in the real host (tests/guest.rs, with hio-test) and a
    /// README with the commands to test, build, check and serve it.
    /// Python or JavaScript: app.py or app.js, the WIT and a README.
    New {
        /// Where (created; it must not exist or be empty).
        path: PathBuf,
        /// Package name; default: PATH's last component.
        #[arg(long)]
        name: Option<String>,
        /// The guest's language: rust, python or js.
        #[arg(long, default_value = "rust")]
        lang: hio_build::Lang,
    },
    /// Build the guest at DIR into components (TARGET/wasm/NAME.wasm) and
    /// check each fits this host. A Rust crate or workspace (Cargo.toml)
    /// builds with rustup's wasm32-unknown-unknown target, or Debian's
    /// rustc-web toolchain (installed with apt when missing); a Python app
    /// (app.py) with componentize-py (from PATH, or installed into
    /// target/pyenv); a JavaScript app (app.js) with componentize-js
    /// (installed with npm into target/jsenv).
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// `hio-host run`: the server's [`Config`] (every flag but these two is
/// one of its fields) and what surrounds it.
#[derive(Parser)]
struct RunArgs {
    #[command(flatten)]
    config: Config,
    /// Event loops, each on its own thread with its own listen socket on the
    /// same address (SO_REUSEPORT), its own guest instance and its own
    /// connections (1 to 1024). --max-conns and --max-buffered-mib are split
    /// between them; --wirelog writes DIR/worker-N. Another process on the
    /// same address is refused, whatever its workers.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: u16,
    /// Compile the guest every time instead of using the compiled-guest cache
    /// ($HIO_CACHE_DIR, else $XDG_CACHE_HOME/hio-host, else ~/.cache/hio-host).
    #[arg(long)]
    no_cache: bool,
    /// Read settings from this TOML file: the keys are these flags' names
    /// (`listen = "0.0.0.0:8080"`, `drain-timeout = 25`, `guest = "echo.wasm"`).
    #[arg(long = "config", id = "config", value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Print the effective settings (as a --config file, with where each
    /// came from) and exit.
    #[arg(long)]
    print_config: bool,
    /// How log lines are written to stderr: text, or one JSON object per line.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Once serving, write one line to this open descriptor and close it:
    /// `READY=1 MAINPID=<pid> LISTEN=<addr>[ LISTEN=<addr>...]` (for
    /// supervisors and scripts; under systemd, NOTIFY_SOCKET is used too).
    #[arg(long, value_name = "FD")]
    ready_fd: Option<i32>,
    /// Listen at this Unix socket path for a successor process (a new
    /// hio-host binary started with --takeover) to hand the listen sockets
    /// and every plain connection over to, without dropping one.
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
    /// Take over from the hio-host listening at --upgrade-socket: its
    /// listen sockets, connections (with their bytes) and guest state; it
    /// then drains what could not move (TLS) and exits. If this process
    /// fails first, the other serves on untouched.
    #[arg(long, requires = "upgrade_socket")]
    takeover: bool,
    /// Serve the admin endpoint here (HTTP): /livez, /readyz, /status,
    /// /metrics (OpenMetrics), POST /swap. Off by default; bind it to
    /// loopback or a private network, it can swap the guest. Port 0 picks
    /// one; --ready-fd's line says which (ADMIN=).
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<std::net::SocketAddr>,
}

/// The command line, with every `run` flag also read from the environment,
/// and GUEST optional when a config file may name it.
fn command() -> clap::Command {
    Cli::command().mut_subcommand("run", |run| {
        file::with_env(run).mut_arg("guest", |a| a.required(false).required_unless_present("config"))
    })
}

/// The parsed command line, and which `run` settings came from the config file.
fn parse() -> Result<(Cli, ArgMatches, BTreeSet<String>), clap::Error> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cmd = command();
    // A first look for --config and where each setting came from; what is
    // missing or conflicts may be in the file.
    let mut matches = cmd.clone().ignore_errors(true).try_get_matches_from(&argv)?;
    let mut taken = BTreeSet::new();
    if let Some(("run", run)) = matches.subcommand()
        && let Some(path) = run.get_one::<PathBuf>("config")
        && let Some(run_cmd) = cmd.find_subcommand("run")
    {
        let (merged, from_file) = file::merge(run_cmd, run, path, argv)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{e:#}\n")))?;
        matches = cmd.clone().try_get_matches_from(merged)?;
        taken = from_file;
    } else {
        matches = cmd.clone().try_get_matches_from(&argv)?;
    }
    if let Some(("run", run)) = matches.subcommand()
        && run.get_raw("guest").is_none()
    {
        let text = "no guest: name GUEST on the command line or `guest` in the --config file\n";
        return Err(clap::Error::raw(clap::error::ErrorKind::InvalidValue, text));
    }
    let cli = Cli::from_arg_matches(&matches)?;
    Ok((cli, matches, taken))
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `tracing`'s text lines (coloured on a terminal).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target` (`guest`
    /// for the guest's lines), `message` and the same fields as the text
    /// (`ca`, `id`, `guest`...), `spans` (e.g. `worker` with its `n`).
    Json,
}

/// Log to stderr, filtered by `HIO_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HIO_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // A log nobody reads (a closed pipe, a full disk) must not take the
        // server down: by default a failed write is reported with
        // eprintln!, which panics on the same broken stderr.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(true).init(),
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let (cli, matches, from_file) = match parse() {
        Ok(parsed) => parsed,
        Err(e) => return usage_error(e),
    };
    let format = match &cli.command {
        Cmd::Run(args) => args.log_format,
        Cmd::Check { .. } | Cmd::New { .. } | Cmd::Build { .. } => LogFormat::Text,
    };
    init_logging(format);
    let result = match cli.command {
        Cmd::Run(args) if args.print_config => print_config(&args, &matches, &from_file),
        Cmd::Run(args) => serve(*args),
        Cmd::Check { guest } => check(&guest),
        Cmd::New { path, name, lang } => new(&path, name.as_deref(), lang),
        Cmd::Build { dir } => build(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("hio-host: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// A value that does not parse (a malformed address, a word for a number)
/// is one `hio-host: ...` line and exit 1, like every other bad setting;
/// the rest (unknown flags, a missing guest, --help) is clap's.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        e.exit();
    }
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    say(&format!("hio-host: {}{}", line.strip_prefix("error: ").unwrap_or(line), from_environment(&e)));
    ExitCode::FAILURE
}

/// One line on stderr, if anyone reads it.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// ", from HIO_X" when the value a flag refused came from its variable.
fn from_environment(e: &clap::Error) -> String {
    let Some(clap::error::ContextValue::String(flag)) = e.get(clap::error::ContextKind::InvalidArg) else {
        return String::new();
    };
    let long = flag.trim_start_matches("--").split([' ', '=']).next().unwrap_or_default();
    let var = format!("HIO_{}", long.to_uppercase().replace('-', "_"));
    let on_command_line = std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    if std::env::var_os(&var).is_some() && !on_command_line { format!(" (from {var})") } else { String::new() }
}

/// Buffers of a few hundred KiB (a burst's bytes, lifted out of the guest
/// and queued) come and go many times a second. By default glibc gives the
/// top of its heap back to the kernel as soon as 2x the last such buffer is
/// free there, and the next buffer then starts on fresh, zeroed pages: in
/// bench (c) the page faults tripled the host's kernel time. Fixed
/// thresholds keep up to 16 MiB of freed heap for reuse (a bounded amount,
/// unlike an allocator that keeps whole segments per thread).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

/// `run --print-config`: the settings, once they pass the checks a server makes.
fn print_config(args: &RunArgs, matches: &ArgMatches, from_file: &BTreeSet<String>) -> anyhow::Result<()> {
    args.config.validate()?;
    let run = matches.subcommand_matches("run").ok_or_else(|| anyhow::anyhow!("not the run command"))?;
    let cmd = command();
    let run_cmd = cmd.find_subcommand("run").ok_or_else(|| anyhow::anyhow!("no run command"))?;
    use std::io::Write;
    std::io::stdout().write_all(file::print(run_cmd, run, from_file).as_bytes())?;
    Ok(())
}

fn new(path: &std::path::Path, name: Option<&str>, lang: hio_build::Lang) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let made = hio_build::scaffold::new(path, name, lang)?;
    let from = if made.sdk.is_empty() { String::new() } else { format!(" (hio-guest and hio-test from {})", made.sdk) };
    let mut out = format!("created guest {} in {}{from}\n", made.name, made.dir.display());
    for file in &made.files {
        writeln!(out, "  {file}")?;
    }
    let test = if lang == hio_build::Lang::Rust { "cargo test && " } else { "" };
    writeln!(out, "next: cd '{}' && {test}hio-host build", made.dir.display())?;
    // A closed stdout (`| head`) is not an error of the scaffold's.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    Ok(())
}

fn build(dir: &std::path::Path) -> anyhow::Result<()> {
    for component in hio_build::build_dir(dir)? {
        check(&component)?;
    }
    Ok(())
}

fn check(guest: &std::path::Path) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let c = hio_host::check(guest)?;
    let list = |names: &[String]| if names.is_empty() { "(none)".to_string() } else { names.join(", ") };
    let mut out = format!("imports: {}\nexports: {}\n", list(&c.imports), list(&c.exports));
    if c.problems.is_empty() {
        writeln!(out, "{} fits the hio:tcp/server world", guest.display())?;
    }
    for p in &c.problems {
        writeln!(out, "problem: {p}")?;
    }
    std::io::stdout().write_all(out.as_bytes())?;
    if !c.problems.is_empty() {
        anyhow::bail!("{} does not fit the hio:tcp/server world", guest.display());
    }
    Ok(())
}

/// Every connection is a descriptor: take the hard limit, and say so when
/// even that is below --max-conns (connections beyond it are then refused
/// as they arrive, never left hanging).
fn raise_descriptor_limit(max_conns: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < max_conns.saturating_add(64) => tracing::warn!(
            nofile = limit,
            max_conns,
            "the descriptor limit is below --max-conns; beyond it new connections are refused"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
}

fn serve(args: RunArgs) -> anyhow::Result<()> {
    let mut config = args.config;
    if args.no_cache {
        config.cache = None;
    }
    raise_descriptor_limit(config.max_conns);
    let workers = args.workers.into();
    let listeners = activation_sockets()?;
    if let Some(fd) = args.ready_fd
        && (3..3 + listeners.len() as i32).contains(&fd)
    {
        anyhow::bail!("--ready-fd {fd} is one of the listen sockets systemd passed (3 to {})", 2 + listeners.len());
    }
    let process = hio_host::pool::Process {
        signals: true,
        notifier: Some(std::sync::Arc::new(hio_host::Notifier::new(workers, args.ready_fd)?)),
        listeners,
        upgrade_socket: args.upgrade_socket,
        takeover: args.takeover,
        admin: args.admin,
    };
    hio_host::pool::run(config, workers, process)
}

/// Listen sockets passed by systemd (socket activation: `LISTEN_FDS` and
/// `LISTEN_PID`, `sd_listen_fds(3)`), served instead of `--listen`.
fn activation_sockets() -> anyhow::Result<Vec<std::net::TcpListener>> {
    use std::os::fd::FromRawFd;
    let fds = sd_notify::listen_fds().map_err(|e| anyhow::anyhow!("bad socket activation variables: {e}"))?;
    if fds.len() > 0 {
        tracing::info!(
            sockets = fds.len(),
            "socket activation: serving the sockets systemd passed (--listen is not used)"
        );
    }
    // SAFETY: LISTEN_PID names this process, so systemd's protocol gives it
    // these descriptors, each once; `Acceptor::adopt` checks each is a
    // listening TCP socket before serving it.
    Ok(fds.map(|fd| unsafe { std::net::TcpListener::from_raw_fd(fd) }).collect())
}
