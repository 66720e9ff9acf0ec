//! `hio-host new`: a guest, ready to build, check and serve: a Rust crate
//! (with its tests) or a Python app (with the WIT).
//!
//! A Rust crate's dependencies on the SDK (`hio-guest`) and the test harness
//! (`hio-test`) are paths into the checkout this tool was built from when
//! it is still there (these crates are not on crates.io yet), else their
//! crates.io versions.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::Lang;

/// The template's files: (path in the new crate, contents with `{{name}}`,
/// `{{hio_guest}}` and `{{hio_test}}` to fill in).
const RUST: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    ("tests/guest.rs", include_str!("../templates/rust/tests/guest.rs")),
    ("README.md", include_str!("../templates/rust/README.md")),
    (".gitignore", include_str!("../templates/rust/gitignore")),
];

/// A JavaScript guest's files.
const JS: &[(&str, &str)] = &[
    ("app.js", include_str!("../templates/js/app.js")),
    ("wit/hio.wit", crate::WIT),
    ("README.md", include_str!("../templates/js/README.md")),
    (".gitignore", include_str!("../templates/js/gitignore")),
];

/// A Python guest's files.
const PYTHON: &[(&str, &str)] = &[
    ("app.py", include_str!("../templates/python/app.py")),
    ("wit/hio.wit", crate::WIT),
    ("README.md", include_str!("../templates/python/README.md")),
    (".gitignore", include_str!("../templates/python/gitignore")),
];

/// What [`new`] made.
#[derive(Debug)]
pub struct Created {
    /// The crate's directory.
    pub dir: PathBuf,
    /// Its package name.
    pub name: String,
    /// The files written, relative to `dir`.
    pub files: Vec<&'static str>,
    /// Where `hio-guest` and `hio-test` come from (a checkout's path, or
    /// crates.io); empty for Python.
    pub sdk: String,
}

/// Write a new guest in `lang` at `dir` (created; it must not exist or be
/// empty), named `name` or after the directory. Errors: `dir` holds
/// files, the name is not a valid package name, a file cannot be written.
pub fn new(dir: &Path, name: Option<&str>, lang: Lang) -> Result<Created> {
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} exists and is not empty", dir.display());
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            // `hio-host new .` is named after the directory it stands in.
            let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            let n = absolute.file_name().and_then(|n| n.to_str()).context("name the guest with --name")?;
            check_name(n).map_err(|e| anyhow::anyhow!("{e}: name the guest with --name"))?;
            n.to_string()
        }
    };
    check_name(&name)?;
    let dir_name = std::path::absolute(dir).ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    if lang != Lang::Rust && dir_name.as_deref() != Some(name.as_str()) {
        bail!(
            "a {lang:?} guest's component is named after its directory: make the directory {name:?} instead of --name"
        );
    }
    let ((hio_guest, hio_test, sdk, docs), files) = match lang {
        Lang::Rust => (dependencies(), RUST),
        Lang::Python => (Default::default(), PYTHON),
        Lang::Js => (Default::default(), JS),
    };
    for (path, template) in files {
        let text = template
            .replace("{{name}}", &name)
            .replace("{{hio_guest}}", &hio_guest)
            .replace("{{hio_test}}", &hio_test)
            .replace("{{docs}}", &docs);
        let dest = dir.join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&dest, text).with_context(|| format!("cannot write {}", dest.display()))?;
    }
    Ok(Created { dir: dir.to_path_buf(), name, files: files.iter().map(|(p, _)| *p).collect(), sdk })
}

/// A package name as `cargo new` would take it without a warning: lower-case
/// ASCII letters, digits, `-` and `_`, starting with a letter, and not a
/// Rust keyword or a standard crate's name (the crate would shadow it).
fn check_name(name: &str) -> Result<()> {
    const RESERVED: &[&str] = &[
        "as",
        "async",
        "await",
        "break",
        "const",
        "continue",
        "crate",
        "dyn",
        "else",
        "enum",
        "extern",
        "false",
        "fn",
        "for",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "match",
        "mod",
        "move",
        "mut",
        "pub",
        "ref",
        "return",
        "self",
        "static",
        "struct",
        "super",
        "trait",
        "true",
        "type",
        "unsafe",
        "use",
        "where",
        "while",
        "abstract",
        "become",
        "box",
        "do",
        "final",
        "gen",
        "macro",
        "override",
        "priv",
        "try",
        "typeof",
        "unsized",
        "virtual",
        "yield",
        "std",
        "core",
        "alloc",
        "hio_guest",
        "hio_test",
        "hio_host",
        "hio_build",
        "test",
        "proc_macro",
    ];
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!("{name:?} is not a package name (lower-case ASCII letters, digits, - and _, starting with a letter)");
    }
    if RESERVED.contains(&name.replace('-', "_").as_str()) {
        bail!("{name:?} is a Rust keyword or a standard crate's name: pick another");
    }
    Ok(())
}

/// The `hio-guest` and `hio-test` dependency lines, where they point, and
/// how to read their docs.
fn dependencies() -> (String, String, String, String) {
    let version = env!("CARGO_PKG_VERSION");
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    match checkout.filter(|c| c.join("guest/sdk/Cargo.toml").is_file() && c.join("harness/Cargo.toml").is_file()) {
        Some(c) => (
            format!("hio-guest = {{ version = \"{version}\", path = {:?} }}", c.join("guest/sdk")),
            format!("hio-test = {{ version = \"{version}\", path = {:?} }}", c.join("harness")),
            format!("the checkout at {}", c.display()),
            format!(
                "in the checkout at {}: `cargo doc --no-deps -p hio-test --open` and \
                 `(cd guest && cargo doc --no-deps -p hio-guest --open)`",
                c.display()
            ),
        ),
        None => (
            format!("hio-guest = \"{version}\""),
            format!("hio-test = \"{version}\""),
            "crates.io".to_string(),
            "[hio-guest](https://docs.rs/hio-guest), [hio-test](https://docs.rs/hio-test)".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for good in ["policy", "my-policy", "p2_x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "2fast", "my policy", "-x", "é", "Caps", "fn", "std", "hio-guest"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_crate_is_written_once() {
        let dir = std::env::temp_dir().join(format!("hio-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = new(&dir, Some("numbered"), Lang::Rust).unwrap();
        assert_eq!(made.name, "numbered");
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"numbered\"") && manifest.contains("hio-guest = "), "{manifest}");
        assert!(!manifest.contains("{{"), "every placeholder filled: {manifest}");
        let err = new(&dir, None, Lang::Python).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
