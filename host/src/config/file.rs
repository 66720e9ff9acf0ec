//! Where `hio-host run` takes its settings from, strongest first: the
//! command line's flags, `HIO_*` environment variables (one per flag:
//! `--drain-timeout` is `HIO_DRAIN_TIMEOUT`), a TOML file given with
//! `--config FILE` whose keys are the flags' names, and the defaults:
//!
//! ```toml
//! guest = "/srv/hio/lines.wasm"
//! listen = "0.0.0.0:8080"
//! drain-timeout = 25
//! client-crl = ["/etc/hio/revoked.pem"]
//! watch = true
//! ```
//!
//! A file's values go through the flags' own parsers, so a setting means
//! the same and is checked the same wherever it comes from; and
//! `--print-config` writes the effective settings in this format.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// Arguments that are about the settings, not settings themselves (the
/// file may not name another file; `--config` has its variable, HIO_CONFIG).
const NOT_SETTINGS: &[&str] = &["config", "print_config"];

/// clap's own `--help` and `--version`.
fn builtin(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version)
}

fn is_setting(arg: &Arg) -> bool {
    !builtin(arg) && !NOT_SETTINGS.contains(&arg.get_id().as_str())
}

/// The name of a setting: its flag's long name, or a positional's id (`guest`).
fn key(arg: &Arg) -> String {
    arg.get_long().map_or_else(|| arg.get_id().to_string(), str::to_string)
}

/// The settings of `cmd`, the guest (the positional) first.
fn settings(cmd: &Command) -> impl Iterator<Item = &Arg> {
    let setting = |a: &&Arg| is_setting(a);
    let positionals = cmd.get_positionals().filter(setting);
    positionals.chain(cmd.get_arguments().filter(|a| !a.is_positional()).filter(setting))
}

/// `cmd` with every setting also read from `HIO_<KEY>` (upper case, `-` as `_`).
pub fn with_env(cmd: Command) -> Command {
    cmd.mut_args(|arg| {
        if builtin(&arg) || arg.get_id() == "print_config" {
            return arg;
        }
        let var = format!("HIO_{}", key(&arg).to_uppercase().replace('-', "_"));
        arg.env(var)
    })
}

/// `args` (the whole command line) with the settings of the TOML file at
/// `path` added where neither a flag nor the environment gave them, and the
/// keys taken from the file. `cmd` is the `run` command and `matches` what
/// it made of `args`. A key that is no setting, or a value its flag would
/// refuse, is an error naming the key.
pub fn merge(
    cmd: &Command,
    matches: &ArgMatches,
    path: &Path,
    mut args: Vec<OsString>,
) -> Result<(Vec<OsString>, BTreeSet<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map_or(0, |span| text[..span.start].lines().count().max(1));
        anyhow!("config {}: line {line}: {}", path.display(), e.message().trim_end())
    })?;
    let mut taken = BTreeSet::new();
    for (name, value) in &table {
        let arg = settings(cmd).find(|a| key(a) == *name).ok_or_else(|| {
            anyhow!("config {}: unknown key {name:?} (the keys are the flags of `hio-host run`)", path.display())
        })?;
        let overridden = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        let words = words(arg, value).map_err(|e| anyhow!("config {}: key {name:?}: {e}", path.display()))?;
        if overridden {
            continue;
        }
        taken.insert(name.clone());
        for word in words {
            args.push(match arg.get_long() {
                Some(long) if word.is_empty() => format!("--{long}").into(),
                Some(long) => format!("--{long}={word}").into(),
                None => word.into(),
            });
        }
    }
    Ok((args, taken))
}

/// What `value` adds to the command line for `arg` (an empty word: the
/// flag alone), each word checked by the flag's own parser.
fn words(arg: &Arg, value: &toml::Value) -> Result<Vec<String>> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        let on = value.as_bool().ok_or_else(|| anyhow!("expected true or false, not {value}"))?;
        return Ok(if on { vec![String::new()] } else { Vec::new() });
    }
    let many = matches!(arg.get_action(), ArgAction::Append);
    let values: Vec<&toml::Value> = match value {
        toml::Value::Array(items) if many => items.iter().collect(),
        toml::Value::Array(_) => bail!("expected one value, not a list"),
        one => vec![one],
    };
    let mut words = Vec::with_capacity(values.len());
    for v in values {
        let word = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            other => bail!("expected a string or a number, not {other}"),
        };
        // The flag alone on a command line of its own: its parser and checks.
        let alone = Command::new("hio-host run").no_binary_name(true).arg(arg.clone());
        let given = match arg.get_long() {
            Some(long) => format!("--{long}={word}"),
            None => word.clone(),
        };
        if let Err(e) = alone.try_get_matches_from([given]) {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or_default();
            bail!("{}", line.strip_prefix("error: ").unwrap_or(line));
        }
        words.push(word);
    }
    Ok(words)
}

/// The effective settings of `run` as a config file: set ones as
/// `key = value` with where they came from, defaults commented out (so the
/// output, used as a `--config` file, sets exactly what was set).
pub fn print(cmd: &Command, matches: &ArgMatches, from_file: &BTreeSet<String>) -> String {
    let mut out =
        String::from("# hio-host run: effective settings (flags > HIO_* environment > --config file > defaults)\n");
    for arg in settings(cmd) {
        let id = arg.get_id().as_str();
        let Some(raw) = matches.get_raw(id) else { continue };
        let raw: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let name = key(arg);
        let value = toml_value(arg, &raw);
        let (prefix, source) = match matches.value_source(id) {
            Some(ValueSource::DefaultValue) => ("# ", "default".to_string()),
            Some(ValueSource::EnvVariable) => {
                ("", format!("from {}", arg.get_env().map(|v| v.to_string_lossy()).unwrap_or_default()))
            }
            _ if from_file.contains(&name) => ("", "from the config file".to_string()),
            _ => ("", "from the command line".to_string()),
        };
        out.push_str(&format!("{prefix}{name} = {value}    # {source}\n"));
    }
    out
}

/// A setting's raw values as the TOML a config file would hold.
fn toml_value(arg: &Arg, raw: &[String]) -> toml::Value {
    let scalar = |s: &String| {
        if let Ok(n) = s.parse::<i64>() {
            toml::Value::Integer(n)
        } else if let Ok(x) = s.parse::<f64>()
            && x.is_finite()
        {
            toml::Value::Float(x)
        } else {
            toml::Value::String(s.clone())
        }
    };
    match arg.get_action() {
        ArgAction::SetTrue => toml::Value::Boolean(raw.first().is_some_and(|v| v == "true")),
        ArgAction::Append => toml::Value::Array(raw.iter().map(|s| toml::Value::String(s.clone())).collect()),
        _ => raw.first().map_or(toml::Value::String(String::new()), scalar),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;
    use crate::Config;

    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        config: Config,
        #[arg(long = "config", id = "config")]
        file: Option<std::path::PathBuf>,
    }

    /// What `args` plus a config file holding `toml` make: the settings,
    /// the keys taken from the file, and `--print-config`'s text.
    fn run(args: &[&str], toml: &str) -> Result<(Config, BTreeSet<String>, String)> {
        let path = std::env::temp_dir().join(format!(
            "hio-config-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, toml)?;
        let cmd = Run::command().mut_arg("guest", |a| a.required(false));
        let mut argv: Vec<OsString> = vec!["run".into()];
        argv.extend(args.iter().map(OsString::from));
        argv.extend(["--config".into(), path.clone().into()]);
        let first = cmd.clone().try_get_matches_from(&argv)?;
        let (merged, taken) = merge(&cmd, &first, &path, argv)?;
        std::fs::remove_file(&path)?;
        let matches = cmd.clone().try_get_matches_from(merged)?;
        let text = print(&cmd, &matches, &taken);
        Ok((Run::from_arg_matches(&matches)?.config, taken, text))
    }

    #[test]
    fn the_file_fills_in_what_the_command_line_leaves_out() {
        let toml = "guest = \"f.wasm\"\ntymeout = 5\ndrain-timeout = 0.5\nwatch = true\nlisten = \":9\"\n";
        let (config, taken, _) = run(&["--tymeout", "7"], toml).unwrap();
        assert_eq!(config.tymeout, 7.0, "the flag wins");
        assert_eq!(config.drain_timeout, 0.5);
        assert!(config.watch);
        assert_eq!(config.ha, "0.0.0.0:9".parse().unwrap(), "parsed as --listen is");
        assert_eq!(config.guest, std::path::PathBuf::from("f.wasm"));
        let taken: Vec<&str> = taken.iter().map(String::as_str).collect();
        assert_eq!(taken, ["drain-timeout", "guest", "listen", "watch"]);
    }

    #[test]
    fn lists_are_given_as_arrays() {
        let toml = "tls-cert = \"c.pem\"\ntls-key = \"k.pem\"\nclient-crl = [\"a.pem\", \"b.pem\"]\nalpn = [\"h2\"]\n";
        let (config, _, _) = run(&["g.wasm"], toml).unwrap();
        let tls = config.tls.expect("TLS settings");
        assert_eq!(tls.client_crls.len(), 2);
        assert_eq!(tls.alpn, ["h2"]);
    }

    #[test]
    fn a_bad_key_or_value_is_one_error_naming_it() {
        let error = |toml: &str| format!("{:#}", run(&["g.wasm"], toml).unwrap_err());
        assert!(error("tymout = 3\n").contains("unknown key \"tymout\""));
        assert!(error("tymeout = \"soon\"\n").contains("key \"tymeout\": invalid value 'soon'"));
        assert!(error("certify = \"maybe\"\n").contains("key \"certify\""));
        assert!(error("watch = 1\n").contains("key \"watch\": expected true or false"));
        assert!(error("bs = [1, 2]\n").contains("key \"bs\": expected one value"));
        assert!(error("bs = 1\nbl = [\n").contains("line 2"));
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        let toml = "tymeout = 5\nmax-conns = 20\nlisten = \"[::1]:0\"\n";
        let (config, _, text) = run(&["g.wasm", "--watch"], toml).unwrap();
        assert!(text.contains("tymeout = 5    # from the config file"), "{text}");
        assert!(text.contains("watch = true    # from the command line"), "{text}");
        assert!(text.contains("# linger = 10    # default"), "{text}");
        let (again, _, _) = run(&[], &text).unwrap();
        assert_eq!(format!("{again:?}"), format!("{config:?}"));
    }
}
