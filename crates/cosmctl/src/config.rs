//! Where `cosmctl` finds the appliance URL and its API token.
//!
//! Three sources are layered, highest precedence first: command-line flags, environment
//! variables (`COSM_URL`, `COSM_TOKEN`), and the TOML config file (keys `url`, `token`,
//! `token_file`). The URL falls back to [`DEFAULT_URL`]; the token has no default.
//! [`resolve`] is the pure precedence rule; the rest of this module does the I/O around it
//! (finding and parsing the file, reading a token file).

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// URL used when no flag, environment variable or config file gives one.
pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Config file location relative to `$HOME`, used when neither `--config` nor
/// `COSMCTL_CONFIG` names one.
pub(crate) const DEFAULT_CONFIG_SUFFIX: &str = ".config/cosm/cosmctl.toml";

/// Values given by one source that has no token file (flags or environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Layer {
    pub(crate) url: Option<String>,
    pub(crate) token: Option<String>,
}

/// The config file's contents. Unknown keys are refused so a typo is not silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Base URL of the appliance.
    pub(crate) url: Option<String>,
    /// The API token itself.
    pub(crate) token: Option<String>,
    /// A file holding the API token (relative paths are relative to the config file).
    pub(crate) token_file: Option<PathBuf>,
}

/// Which source a setting came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Flag,
    Env,
    File,
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Flag => "the command line",
            Origin::Env => "the environment",
            Origin::File => "the config file",
            Origin::Default => "the built-in default",
        })
    }
}

/// Where the token will be taken from once a command needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// The token itself, given by a flag, the environment or the config file's `token`.
    Value { token: String, origin: Origin },
    /// The config file's `token_file`.
    File(PathBuf),
}

/// The outcome of layering the sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Base URL, without a trailing `/`.
    pub(crate) url: String,
    pub(crate) url_origin: Origin,
    pub(crate) token: Option<TokenSource>,
}

/// A value that is present and not blank.
fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Applies the precedence rule: flag > environment > config file > default. Blank values
/// count as absent. In the config file `token` wins over `token_file` (the loader refuses
/// files that set both).
pub(crate) fn resolve(flags: &Layer, env: &Layer, file: &FileConfig) -> Settings {
    let (url, url_origin) = given(&flags.url)
        .map(|u| (u, Origin::Flag))
        .or_else(|| given(&env.url).map(|u| (u, Origin::Env)))
        .or_else(|| given(&file.url).map(|u| (u, Origin::File)))
        .unwrap_or_else(|| (DEFAULT_URL.to_string(), Origin::Default));
    let value =
        |v: &Option<String>, origin| given(v).map(|token| TokenSource::Value { token, origin });
    let token = value(&flags.token, Origin::Flag)
        .or_else(|| value(&env.token, Origin::Env))
        .or_else(|| value(&file.token, Origin::File))
        .or_else(|| file.token_file.clone().map(TokenSource::File));
    Settings {
        url: normalize_url(&url),
        url_origin,
        token,
    }
}

/// Drops trailing slashes and a trailing `/api/v1`, so both `http://h:8080/` and
/// `http://h:8080/api/v1` name the same appliance.
fn normalize_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    url.strip_suffix("/api/v1").unwrap_or(url).to_string()
}

/// The config file to read and whether the user named it (a named file must exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigPath {
    pub(crate) path: PathBuf,
    pub(crate) explicit: bool,
}

impl ConfigPath {
    /// `--config`/`COSMCTL_CONFIG` if given, else `$HOME/.config/cosm/cosmctl.toml`.
    pub(crate) fn choose(given: Option<PathBuf>) -> Option<ConfigPath> {
        match given {
            Some(path) => Some(ConfigPath {
                path,
                explicit: true,
            }),
            None => std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|home| ConfigPath {
                    path: PathBuf::from(home).join(DEFAULT_CONFIG_SUFFIX),
                    explicit: false,
                }),
        }
    }
}

/// Reads the config file. A missing default file is an empty config; a missing named file,
/// bad TOML or an unknown key is an error naming the file.
pub(crate) fn load_file(config: &ConfigPath) -> Result<FileConfig> {
    let path = &config.path;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !config.explicit => {
            return Ok(FileConfig::default())
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read config file {}", path.display()))
        }
    };
    let mut file = parse_file(&text)
        .map_err(|msg| anyhow::anyhow!("invalid config file {}: {msg}", path.display()))?;
    if let Some(tf) = &file.token_file {
        if tf.is_relative() {
            let dir = path.parent().unwrap_or(Path::new("."));
            file.token_file = Some(dir.join(tf));
        }
    }
    Ok(file)
}

/// Parses config text; the error says which line and key are wrong.
fn parse_file(text: &str) -> std::result::Result<FileConfig, String> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {msg}")
            }
            None => msg,
        }
    })?;
    if file.token.is_some() && file.token_file.is_some() {
        return Err("set either `token` or `token_file`, not both".to_string());
    }
    Ok(file)
}

/// Produces the token, reading the token file if that is where it lives.
pub(crate) fn read_token(source: &TokenSource) -> Result<String> {
    match source {
        TokenSource::Value { token, .. } => Ok(token.clone()),
        TokenSource::File(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read token_file {} named in the config file",
                    path.display()
                )
            })?;
            let token = text.trim();
            if token.is_empty() {
                bail!("token_file {} is empty", path.display());
            }
            Ok(token.to_string())
        }
    }
}

/// The error given when a command needs a token and none was given anywhere.
pub(crate) fn missing_token(config: Option<&ConfigPath>) -> anyhow::Error {
    let file = match config {
        Some(c) => c.path.display().to_string(),
        None => format!("$HOME/{DEFAULT_CONFIG_SUFFIX}"),
    };
    anyhow::anyhow!(
        "no API token given. Give one with --token TOKEN, with the COSM_TOKEN environment \
         variable, or with `token = \"...\"` or `token_file = \"/path\"` in the config file \
         {file}. The appliance wrote its first admin token to <data_dir>/admin.token when it \
         first started."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(url: Option<&str>, token: Option<&str>) -> Layer {
        Layer {
            url: url.map(String::from),
            token: token.map(String::from),
        }
    }

    fn file(url: Option<&str>, token: Option<&str>, token_file: Option<&str>) -> FileConfig {
        FileConfig {
            url: url.map(String::from),
            token: token.map(String::from),
            token_file: token_file.map(PathBuf::from),
        }
    }

    fn tok(token: &str, origin: Origin) -> Option<TokenSource> {
        Some(TokenSource::Value {
            token: token.to_string(),
            origin,
        })
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let flags = layer(Some("http://flag:1"), Some("t-flag"));
        let env = layer(Some("http://env:2"), Some("t-env"));
        let f = file(Some("http://file:3"), Some("t-file"), None);

        let s = resolve(&flags, &env, &f);
        assert_eq!(
            (s.url.as_str(), s.url_origin),
            ("http://flag:1", Origin::Flag)
        );
        assert_eq!(s.token, tok("t-flag", Origin::Flag));

        let s = resolve(&Layer::default(), &env, &f);
        assert_eq!(
            (s.url.as_str(), s.url_origin),
            ("http://env:2", Origin::Env)
        );
        assert_eq!(s.token, tok("t-env", Origin::Env));

        let s = resolve(&Layer::default(), &Layer::default(), &f);
        assert_eq!(
            (s.url.as_str(), s.url_origin),
            ("http://file:3", Origin::File)
        );
        assert_eq!(s.token, tok("t-file", Origin::File));
    }

    #[test]
    fn defaults_when_nothing_given() {
        let s = resolve(&Layer::default(), &Layer::default(), &FileConfig::default());
        assert_eq!(s.url, DEFAULT_URL);
        assert_eq!(s.url_origin, Origin::Default);
        assert_eq!(s.token, None);
    }

    #[test]
    fn url_and_token_resolve_independently() {
        // URL from the flag, token from the file's token_file.
        let s = resolve(
            &layer(Some("http://flag:1"), None),
            &layer(None, None),
            &file(Some("http://file:3"), None, Some("/etc/cosm/token")),
        );
        assert_eq!(s.url_origin, Origin::Flag);
        assert_eq!(s.token, Some(TokenSource::File("/etc/cosm/token".into())));
        // Token from the environment beats the file's token_file.
        let s = resolve(
            &Layer::default(),
            &layer(None, Some("t-env")),
            &file(None, None, Some("/etc/cosm/token")),
        );
        assert_eq!(s.url, DEFAULT_URL);
        assert_eq!(s.token, tok("t-env", Origin::Env));
    }

    #[test]
    fn blank_values_count_as_absent() {
        let s = resolve(
            &layer(Some(""), Some("  ")),
            &layer(Some("http://env:2"), None),
            &file(None, Some("t-file"), None),
        );
        assert_eq!(s.url, "http://env:2");
        assert_eq!(s.token, tok("t-file", Origin::File));
    }

    #[test]
    fn url_is_normalized() {
        for u in [
            "http://h:8080",
            "http://h:8080/",
            "http://h:8080/api/v1",
            "http://h:8080/api/v1/",
        ] {
            let s = resolve(
                &layer(Some(u), None),
                &Layer::default(),
                &FileConfig::default(),
            );
            assert_eq!(s.url, "http://h:8080", "{u}");
        }
    }

    #[test]
    fn config_file_keys() {
        let f = parse_file("url = \"http://a:1\"\ntoken_file = \"tok\"\n").unwrap();
        assert_eq!(f, file(Some("http://a:1"), None, Some("tok")));
        assert_eq!(parse_file("").unwrap(), FileConfig::default());

        let err = parse_file("url = \"http://a:1\"\ntokn = \"x\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("tokn"), "{err}");

        let err = parse_file("token = \"a\"\ntoken_file = \"b\"\n").unwrap_err();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn unknown_key_error_names_file_and_key() {
        let dir = std::env::temp_dir().join(format!("cosmctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cosmctl.toml");
        std::fs::write(&path, "tokenfile = \"x\"\n").unwrap();
        let err = load_file(&ConfigPath {
            path: path.clone(),
            explicit: true,
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("tokenfile"), "{msg}");

        // token_file is relative to the config file's directory.
        std::fs::write(&path, "token_file = \"admin.token\"\n").unwrap();
        std::fs::write(dir.join("admin.token"), "  secret\n").unwrap();
        let f = load_file(&ConfigPath {
            path: path.clone(),
            explicit: true,
        })
        .unwrap();
        let s = resolve(&Layer::default(), &Layer::default(), &f);
        assert_eq!(read_token(s.token.as_ref().unwrap()).unwrap(), "secret");

        // A missing default file is fine, a missing named file is not.
        let missing = dir.join("nope.toml");
        let default = ConfigPath {
            path: missing.clone(),
            explicit: false,
        };
        assert_eq!(load_file(&default).unwrap(), FileConfig::default());
        let named = ConfigPath {
            path: missing,
            explicit: true,
        };
        assert!(load_file(&named).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_token_names_all_three_ways() {
        let msg = missing_token(None).to_string();
        for want in ["--token", "COSM_TOKEN", "token_file", "admin.token"] {
            assert!(msg.contains(want), "{msg}");
        }
    }
}
