//! Compose file -> stack plan (issue 21, "deploy a stack from a pasted compose file"): what
//! `docker stack deploy -c FILE STACK` would create through the Docker API, computed by a pure
//! function (no I/O, no clock) so the dashboard can show the plan, then carry it out.
//!
//! It follows the docker CLI's conversion (compose file format 3.x / the compose spec as the CLI
//! reads it): names scoped as `{stack}_{name}`, the `com.docker.stack.namespace` label on every
//! object, a `{stack}_default` overlay network for services that name none, ports, deploy
//! settings, healthchecks, mounts, secrets and configs. What a pasted file cannot carry is refused
//! with an error naming the key: `${VAR}` interpolation (there is no environment to read),
//! secrets, configs and `env_file` read from files (there are no files beside it). Options the CLI
//! ignores become warnings.

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The largest compose file read: a pasted file is text a person wrote, far below this.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// The label that ties every object to its stack (what `docker stack ls/rm` look for).
pub const LABEL_NAMESPACE: &str = "com.docker.stack.namespace";
/// The service label that keeps the image as the file wrote it (the CLI's, for `stack services`).
pub const LABEL_IMAGE: &str = "com.docker.stack.image";
/// The most ports one service may publish, ranges expanded (a bound on the plan's size).
const MAX_PORTS: usize = 65_536;

/// What to create through the Docker API for one stack, in the order a caller needs it:
/// networks first, then services (after filling in the secret and config IDs).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StackPlan {
    /// Networks to create if absent: (full name, the body of POST /networks/create as JSON).
    pub networks: Vec<(String, Value)>,
    /// External networks the services need (must already exist): names.
    pub external_networks: Vec<String>,
    /// Services: (full name "{stack}_{service}", the ServiceSpec JSON for POST /services/create
    /// or /services/{id}/update), in Docker's field names.
    pub services: Vec<(String, Value)>,
    /// Secrets the services reference, by name, that must already exist; each service's spec
    /// carries `"SecretID": ""` for the caller to fill after looking the name up.
    pub external_secrets: Vec<String>,
    /// Configs the services reference, by name, that must already exist (`"ConfigID": ""`).
    pub external_configs: Vec<String>,
    /// What the file asks that is ignored, as the CLI prints "Ignoring unsupported options".
    pub warnings: Vec<String>,
}

/// Why a compose file cannot be planned; the message names the key, so a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    /// The file is over [`MAX_FILE_BYTES`].
    #[error("compose file too large: {0} bytes (at most 1 MiB)")]
    TooLarge(usize),
    /// The stack name would not make valid object names.
    #[error("invalid stack name {0:?}: use letters, digits, '-' and '_', starting and ending with a letter or digit, at most 63 characters")]
    StackName(String),
    /// The YAML parser's error, with its line and column.
    #[error("not YAML: {0}")]
    NotYaml(String),
    /// A key whose value cannot be converted: `{path}: {message}`.
    #[error("{path}: {message}")]
    Invalid {
        /// Where in the file, as `services.web.ports[0]`.
        path: String,
        /// What is wrong there.
        message: String,
    },
}

type Result<T> = std::result::Result<T, ComposeError>;
/// An object to create: (full name, its JSON body).
type Named = (String, Value);
/// A published port: (protocol, target, published or 0).
type PortTriple = (String, u16, u16);

fn bad(path: &str, message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Options of a service the CLI ignores (its `UnsupportedProperties`, plus what swarm services
/// have no field for).
const IGNORED_SERVICE_KEYS: &[&str] = &[
    "build",
    "cgroupns_mode",
    "cgroup_parent",
    "depends_on",
    "devices",
    "domainname",
    "external_links",
    "ipc",
    "links",
    "mac_address",
    "network_mode",
    "pid",
    "privileged",
    "restart",
    "security_opt",
    "shm_size",
    "userns_mode",
    "ulimits",
    "isolation",
    "credential_spec",
    "oom_score_adj",
    "platform",
    "pull_policy",
    "profiles",
    "scale",
];

/// Options the CLI refuses outright, with the reason it gives.
const FORBIDDEN_SERVICE_KEYS: &[(&str, &str)] = &[
    ("extends", "support for `extends` is not implemented"),
    (
        "volume_driver",
        "define a volume in the top-level `volumes` with its driver instead",
    ),
    (
        "volumes_from",
        "define the shared volume in the top-level `volumes` and mount it in each service instead",
    ),
    ("cpu_quota", "set resource limits with deploy.resources"),
    ("cpu_shares", "set resource limits with deploy.resources"),
    ("cpuset", "set resource limits with deploy.resources"),
    ("mem_limit", "set resource limits with deploy.resources"),
    ("memswap_limit", "set resource limits with deploy.resources"),
    (
        "env_file",
        "a pasted compose file has no files beside it: put the variables in `environment`",
    ),
];

/// Turns a compose file and a stack name into the stack's plan, the way `docker stack deploy -c`
/// converts it; the one entry point of this module.
pub fn plan(stack: &str, yaml: &str) -> Result<StackPlan> {
    if yaml.len() > MAX_FILE_BYTES {
        return Err(ComposeError::TooLarge(yaml.len()));
    }
    check_stack_name(stack)?;
    let mut doc: serde_norway::Value =
        serde_norway::from_str(yaml).map_err(|e| ComposeError::NotYaml(e.to_string()))?;
    doc.apply_merge()
        .map_err(|e| ComposeError::NotYaml(e.to_string()))?;
    let mut root = to_json(&doc, "")?;
    let top = match &mut root {
        Value::Object(m) => m,
        Value::Null => return Err(bad("services", "the file is empty: no services")),
        _ => {
            return Err(bad(
                "(top level)",
                "must be a mapping with a `services` key",
            ))
        }
    };
    let mut warnings = Vec::new();
    for (key, value) in top.iter_mut() {
        match key.as_str() {
            "services" | "networks" | "volumes" | "secrets" | "configs" => {
                interpolate(value, key, yaml)?
            }
            "version" => check_version(value)?,
            k if k.starts_with("x-") => {}
            k => warnings.push(format!("Ignoring unsupported options: {k}")),
        }
    }
    let mut cx = Cx {
        stack: stack.to_string(),
        warnings,
        networks: definitions(top.get("networks"), "networks")?,
        volumes: definitions(top.get("volumes"), "volumes")?,
        secrets: definitions(top.get("secrets"), "secrets")?,
        configs: definitions(top.get("configs"), "configs")?,
        used_networks: BTreeSet::new(),
        used_secrets: BTreeSet::new(),
        used_configs: BTreeSet::new(),
    };
    let secrets = file_objects(&cx.secrets, "secrets")?;
    let configs = file_objects(&cx.configs, "configs")?;
    let volumes = volume_defs(&cx.volumes)?;
    let services = match top.get("services") {
        Some(Value::Object(m)) if !m.is_empty() => m,
        Some(Value::Object(_)) | Some(Value::Null) | None => {
            return Err(bad("services", "no services in the compose file"))
        }
        Some(_) => return Err(bad("services", "must be a mapping of service names")),
    };
    let mut out = StackPlan::default();
    for (name, svc) in services {
        let spec = cx.service(name, svc, &secrets, &configs, &volumes)?;
        out.services.push((format!("{stack}_{name}"), spec));
    }
    let (networks, external) = cx.networks_to_create()?;
    out.networks = networks;
    out.external_networks = external;
    out.external_secrets = cx
        .used_secrets
        .iter()
        .filter_map(|k| secrets.get(k).cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    out.external_configs = cx
        .used_configs
        .iter()
        .filter_map(|k| configs.get(k).cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    out.warnings = cx.warnings;
    Ok(out)
}

/// Swarm's rule for object names (a DNS label, with `_` allowed inside), which the service
/// names built from the stack name must pass.
fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

fn check_stack_name(stack: &str) -> Result<()> {
    // The CLI refuses a name of only spaces and quotes; the daemon then refuses service names
    // that are not DNS-like: check both here, before anything is created.
    let trimmed = stack.trim_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'');
    if trimmed.is_empty() || !valid_name(stack) {
        return Err(ComposeError::StackName(stack.to_string()));
    }
    Ok(())
}

fn check_version(v: &Value) -> Result<()> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Null => return Ok(()),
        _ => return Err(bad("version", "must be a string such as \"3.8\"")),
    };
    if s == "3" || s.starts_with("3.") {
        return Ok(());
    }
    Err(bad(
        "version",
        format!("unsupported Compose file version {s:?}: stacks need version 3.x (or no version)"),
    ))
}

// ---------------------------------------------------------------------------------------------
// YAML -> JSON, interpolation

fn to_json(v: &serde_norway::Value, path: &str) -> Result<Value> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(n) => Value::Number(n),
                    None => return Err(bad(or_top(path), "numbers must be finite")),
                }
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(to_json(item, &format!("{path}[{i}]"))?);
            }
            Value::Array(out)
        }
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, item) in m {
                let key = match k {
                    Y::String(s) => s.clone(),
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".to_string(),
                    _ => return Err(bad(or_top(path), "mapping keys must be scalars")),
                };
                let child = join(path, &key);
                let value = to_json(item, &child)?;
                out.insert(key, value);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            return Err(bad(
                or_top(path),
                format!("YAML tags such as {} are not supported", t.tag),
            ))
        }
    })
}

fn or_top(path: &str) -> &str {
    if path.is_empty() {
        "(top level)"
    } else {
        path
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Applies compose's `$$` escape and refuses `${VAR}` / `$VAR`: a file pasted into a page has
/// no environment to take values from, and guessing empty strings would deploy the wrong thing.
fn interpolate(v: &mut Value, path: &str, yaml: &str) -> Result<()> {
    match v {
        Value::String(s) if s.contains('$') => {
            *s = unescape_dollars(s).map_err(|token| {
                let line = yaml
                    .lines()
                    .position(|l| l.contains(&token))
                    .map(|n| format!(" (line {})", n + 1))
                    .unwrap_or_default();
                bad(
                    path,
                    format!("variable interpolation is not supported: {token:?}{line}; write the value itself (or $$ for a literal $)"),
                )
            })?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{path}[{i}]"), yaml)?;
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                interpolate(item, &join(path, k), yaml)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `$$` -> `$`; `${...}` or `$NAME` -> Err(the token).
fn unescape_dollars(s: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek().map(|&(_, n)| n) {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                let rest = s.get(i..).unwrap_or("");
                let end = rest.find('}').map(|e| e + 1).unwrap_or(rest.len());
                return Err(rest.get(..end).unwrap_or(rest).to_string());
            }
            Some(n) if n.is_ascii_alphabetic() || n == '_' => {
                let rest = s.get(i..).unwrap_or("");
                let end = rest
                    .char_indices()
                    .skip(1)
                    .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map(|(e, _)| e)
                    .unwrap_or(rest.len());
                return Err(rest.get(..end).unwrap_or(rest).to_string());
            }
            _ => out.push('$'),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Scalar helpers

fn map<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(bad(path, "must be a mapping")),
    }
}

/// A mapping, with `null` (a key written with nothing after it) taken as empty.
fn map_or_empty(v: &Value, path: &str) -> Result<Map<String, Value>> {
    match v {
        Value::Null => Ok(Map::new()),
        Value::Object(m) => Ok(m.clone()),
        _ => Err(bad(path, "must be a mapping")),
    }
}

/// A scalar as text (strings, numbers and booleans, as compose's label and env maps allow).
fn scalar(v: &Value, path: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(bad(path, "must be a string")),
    }
}

fn string(v: &Value, path: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(bad(path, "must be a string")),
    }
}

fn boolean(v: &Value, path: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        // YAML 1.1 spellings, which the CLI's parser takes as booleans.
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" => Ok(true),
            "false" | "no" | "off" | "n" => Ok(false),
            _ => Err(bad(path, "must be true or false")),
        },
        _ => Err(bad(path, "must be true or false")),
    }
}

fn uint(v: &Value, path: &str) -> Result<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| bad(path, format!("must be a whole number, not {n}"))),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse()
            .map_err(|_| bad(path, format!("number too large: {s}"))),
        _ => Err(bad(path, "must be a whole number")),
    }
}

/// A string or a list of strings (`dns: 8.8.8.8` or `dns: [8.8.8.8]`).
fn string_list(v: &Value, path: &str) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| scalar(x, &format!("{path}[{i}]")))
            .collect(),
        other => Ok(vec![scalar(other, path)?]),
    }
}

/// A list of `key=value` (or `key`) or a mapping: labels, environment, sysctls, driver options.
/// A key with no value maps to None.
fn key_values(v: &Value, path: &str) -> Result<BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, x) in m {
                let value = match x {
                    Value::Null => None,
                    x => Some(scalar(x, &join(path, k))?),
                };
                out.insert(k.clone(), value);
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let s = scalar(x, &p)?;
                let (k, value) = match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (s.clone(), None),
                };
                if k.is_empty() {
                    return Err(bad(&p, format!("invalid entry {s:?}: the key is empty")));
                }
                out.insert(k, value);
            }
        }
        _ => return Err(bad(path, "must be a mapping or a list of key=value")),
    }
    Ok(out)
}

/// Labels as the API takes them (a key with no value is an empty label).
fn labels(v: Option<&Value>, path: &str) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    if let Some(v) = v {
        for (k, x) in key_values(v, path)? {
            out.insert(k, Value::String(x.unwrap_or_default()));
        }
    }
    Ok(out)
}

fn string_map(v: &Value, path: &str) -> Result<Map<String, Value>> {
    labels(Some(v), path)
}

/// A Go duration ("1m30s", "500ms", "1.5h") as nanoseconds, as the CLI parses durations.
fn duration(v: &Value, path: &str) -> Result<i64> {
    let s = match v {
        Value::String(s) => s.as_str(),
        Value::Number(n) if n.as_u64() == Some(0) => return Ok(0),
        _ => return Err(bad(path, "must be a duration such as \"10s\" or \"1m30s\"")),
    };
    parse_duration(s).ok_or_else(|| {
        bad(
            path,
            format!("invalid duration {s:?} (use a number with a unit: ns, us, ms, s, m, h)"),
        )
    })
}

fn parse_duration(s: &str) -> Option<i64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|&(_, c)| c.is_ascii_digit() || c == '.')
            .map(|(i, _)| i)
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else if int_part.len() > 20 {
            return None;
        } else {
            int_part.parse().ok()?
        };
        let mut value = int.checked_mul(scale)?;
        // At most 18 fraction digits count (below a nanosecond per hour anyway).
        let frac = frac_part.get(..frac_part.len().min(18)).unwrap_or("");
        if !frac.is_empty() {
            let digits: u128 = frac.parse().ok()?;
            let div = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
            value = value.checked_add(digits.checked_mul(scale)? / div)?;
        }
        total = total.checked_add(value)?;
        rest = next;
    }
    i64::try_from(total).ok()
}

/// A size in bytes: a number, or "64M", "1.5g", "512KiB" (binary multiples, as the CLI's
/// `RAMInBytes`).
fn bytes(v: &Value, path: &str) -> Result<i64> {
    let s = match v {
        Value::Number(n) => {
            return n
                .as_u64()
                .and_then(|u| i64::try_from(u).ok())
                .ok_or_else(|| bad(path, format!("invalid size {n}")))
        }
        Value::String(s) => s.as_str(),
        _ => return Err(bad(path, "must be a size such as \"64M\"")),
    };
    parse_bytes(s).ok_or_else(|| {
        bad(
            path,
            format!("invalid size {s:?} (use a number with an optional unit: k, m, g, t, p)"),
        )
    })
}

fn parse_bytes(s: &str) -> Option<i64> {
    let num_len = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (num, unit) = s.split_at(num_len);
    if !num.bytes().next()?.is_ascii_digit() {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let mut u = unit.as_str();
    let mut mult: f64 = 1.0;
    if let Some(c) = u.chars().next() {
        let power = match c {
            'k' => 1,
            'm' => 2,
            'g' => 3,
            't' => 4,
            'p' => 5,
            _ => 0,
        };
        if power > 0 {
            mult = 1024f64.powi(power);
            u = u.get(1..)?;
        }
    }
    let u = u.strip_prefix('i').unwrap_or(u);
    let u = u.strip_prefix('b').unwrap_or(u);
    if !u.is_empty() {
        return None;
    }
    let total = value * mult;
    if !total.is_finite() || total >= 9.2e18 {
        return None;
    }
    // Truncation is the CLI's rounding (int64 of the float).
    Some(total as i64)
}

/// CPUs ("0.5", 2) as NanoCPUs, exactly: more than nine decimals is refused as the CLI does.
fn nano_cpus(v: &Value, path: &str) -> Result<i64> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(bad(path, "must be a number of CPUs such as \"0.5\"")),
    };
    let err = || bad(path, format!("invalid cpus {s:?}"));
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    let (kept, dropped) = frac.split_at(frac.len().min(9));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(bad(
            path,
            format!("invalid cpus {s:?}: value is too precise"),
        ));
    }
    let int_value: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err())?
    };
    let mut frac_value: i64 = 0;
    for (i, b) in kept.bytes().enumerate() {
        let digit = i64::from(b - b'0');
        frac_value += digit * 10i64.pow(8 - u32::try_from(i).map_err(|_| err())?);
    }
    int_value
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_value))
        .ok_or_else(err)
}

/// A command as the CLI takes it: a list as written, or a string split like a shell would
/// (whitespace, single and double quotes, backslash escapes), with no expansion.
fn command(v: &Value, path: &str) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| scalar(x, &format!("{path}[{i}]")))
            .collect(),
        Value::String(s) => {
            shell_split(s).ok_or_else(|| bad(path, format!("unterminated quote in {s:?}")))
        }
        Value::Number(n) => Ok(vec![n.to_string()]),
        _ => Err(bad(path, "must be a string or a list of strings")),
    }
}

fn shell_split(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => word.push(c),
                            '\n' => {}
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => word.push(c),
                    None => word.push('\\'),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Top-level definitions

/// The entries of a top-level section (`networks:`, `volumes:`...), each a mapping (`null` -> {}).
fn definitions(v: Option<&Value>, section: &str) -> Result<BTreeMap<String, Map<String, Value>>> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    let m = match v {
        Value::Null => return Ok(out),
        v => map(v, section)?,
    };
    for (name, def) in m {
        if name.starts_with("x-") {
            continue;
        }
        out.insert(name.clone(), map_or_empty(def, &join(section, name))?);
    }
    Ok(out)
}

/// `external: true`, or the legacy `external: {name: x}`: Some(the object's name) if external.
fn external_name(
    def: &Map<String, Value>,
    key: &str,
    path: &str,
    allowed: &[&str],
) -> Result<Option<String>> {
    let ext = match def.get("external") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => {
            let name = match m.get("name") {
                Some(n) => string(n, &format!("{path}.external.name"))?,
                None => key.to_string(),
            };
            Some(name)
        }
        Some(b) => boolean(b, &format!("{path}.external"))?.then(|| key.to_string()),
    };
    let Some(mut name) = ext else { return Ok(None) };
    if let Some(n) = def.get("name") {
        name = string(n, &format!("{path}.name"))?;
    }
    for k in def.keys() {
        if !(k == "external" || k == "name" || k.starts_with("x-") || allowed.contains(&k.as_str()))
        {
            return Err(bad(
                path,
                format!("conflicting parameters \"external\" and {k:?}: an external object is only named"),
            ));
        }
    }
    Ok(Some(name))
}

/// Secrets or configs: key -> the name of the existing object. Only external ones can be had.
fn file_objects(
    defs: &BTreeMap<String, Map<String, Value>>,
    section: &str,
) -> Result<BTreeMap<String, String>> {
    let kind = &section[..section.len() - 1];
    let mut out = BTreeMap::new();
    for (key, def) in defs {
        let path = join(section, key);
        match external_name(def, key, &path, &["labels"])? {
            Some(name) => {
                out.insert(key.clone(), name);
            }
            None if def.contains_key("file") || def.contains_key("environment") || def.contains_key("content") => {
                return Err(bad(
                    &path,
                    format!("a {kind} read from a file is not supported: a pasted compose file has no files beside it; create the {kind} first (docker {kind} create) and declare it with `external: true`"),
                ))
            }
            None => {
                return Err(bad(
                    &path,
                    format!("only external {section} are supported: create the {kind} first and declare it with `external: true`"),
                ))
            }
        }
    }
    Ok(out)
}

/// A top-level volume as services mount it.
struct VolumeDef {
    /// The volume's name on the nodes.
    name: String,
    external: bool,
    labels: Map<String, Value>,
    driver: Option<String>,
    driver_opts: Map<String, Value>,
}

fn volume_defs(defs: &BTreeMap<String, Map<String, Value>>) -> Result<BTreeMap<String, VolumeDef>> {
    let mut out = BTreeMap::new();
    for (key, def) in defs {
        let path = join("volumes", key);
        if let Some(name) = external_name(def, key, &path, &[])? {
            out.insert(
                key.clone(),
                VolumeDef {
                    name,
                    external: true,
                    labels: Map::new(),
                    driver: None,
                    driver_opts: Map::new(),
                },
            );
            continue;
        }
        let mut v = VolumeDef {
            name: String::new(),
            external: false,
            labels: labels(def.get("labels"), &format!("{path}.labels"))?,
            driver: None,
            driver_opts: Map::new(),
        };
        for (k, x) in def {
            let p = join(&path, k);
            match k.as_str() {
                "name" => v.name = string(x, &p)?,
                "driver" => v.driver = Some(string(x, &p)?),
                "driver_opts" => v.driver_opts = string_map(x, &p)?,
                "labels" | "external" => {}
                k if k.starts_with("x-") => {}
                _ => return Err(bad(&p, "unsupported volume option")),
            }
        }
        out.insert(key.clone(), v);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Services

struct Cx {
    stack: String,
    warnings: Vec<String>,
    networks: BTreeMap<String, Map<String, Value>>,
    volumes: BTreeMap<String, Map<String, Value>>,
    secrets: BTreeMap<String, Map<String, Value>>,
    configs: BTreeMap<String, Map<String, Value>>,
    used_networks: BTreeSet<String>,
    used_secrets: BTreeSet<String>,
    used_configs: BTreeSet<String>,
}

impl Cx {
    fn scope(&self, name: &str) -> String {
        format!("{}_{name}", self.stack)
    }

    fn stack_labels(&self, mut labels: Map<String, Value>) -> Value {
        labels.insert(LABEL_NAMESPACE.into(), Value::String(self.stack.clone()));
        Value::Object(labels)
    }

    fn service(
        &mut self,
        name: &str,
        svc: &Value,
        secrets: &BTreeMap<String, String>,
        configs: &BTreeMap<String, String>,
        volumes: &BTreeMap<String, VolumeDef>,
    ) -> Result<Value> {
        let path = format!("services.{name}");
        let full = self.scope(name);
        if !valid_name(name) || !valid_name(&full) {
            return Err(bad(
                &path,
                format!("invalid service name {full:?}: letters, digits, '-' and '_', at most 63 characters with the stack name"),
            ));
        }
        let svc = match svc {
            Value::Null => return Err(bad(&path, "image is required")),
            v => map(v, &path)?,
        };
        let image = match svc.get("image") {
            Some(Value::Null) | None => return Err(bad(&path, "image is required")),
            Some(v) => string(v, &format!("{path}.image"))?,
        };
        if image.trim().is_empty() {
            return Err(bad(&path, "image is required"));
        }
        let mut container = Map::new();
        container.insert("Image".into(), json!(image));
        let mut task = Map::new();
        let mut deploy = Map::new();
        let mut ports = Vec::new();
        let mut networks_field: Option<&Value> = None;
        let mut dns = Map::new();
        for (key, v) in svc {
            let p = join(&path, key);
            match key.as_str() {
                "image" => {}
                "command" => {
                    container.insert("Args".into(), json!(command(v, &p)?));
                }
                "entrypoint" => {
                    container.insert("Command".into(), json!(command(v, &p)?));
                }
                "environment" => {
                    let env: Vec<String> = key_values(v, &p)?
                        .into_iter()
                        .map(|(k, x)| match x {
                            Some(x) => format!("{k}={x}"),
                            None => k,
                        })
                        .collect();
                    container.insert("Env".into(), json!(env));
                }
                "labels" => {} // below, always (the namespace label)
                "hostname" => {
                    container.insert("Hostname".into(), json!(string(v, &p)?));
                }
                "user" => {
                    container.insert("User".into(), json!(string(v, &p)?));
                }
                "working_dir" => {
                    container.insert("Dir".into(), json!(string(v, &p)?));
                }
                "stop_signal" => {
                    container.insert("StopSignal".into(), json!(string(v, &p)?));
                }
                "stop_grace_period" => {
                    container.insert("StopGracePeriod".into(), json!(duration(v, &p)?));
                }
                "tty" => {
                    container.insert("TTY".into(), json!(boolean(v, &p)?));
                }
                "stdin_open" => {
                    container.insert("OpenStdin".into(), json!(boolean(v, &p)?));
                }
                "read_only" => {
                    container.insert("ReadOnly".into(), json!(boolean(v, &p)?));
                }
                "init" => {
                    container.insert("Init".into(), json!(boolean(v, &p)?));
                }
                "cap_add" => {
                    container.insert("CapabilityAdd".into(), json!(string_list(v, &p)?));
                }
                "cap_drop" => {
                    container.insert("CapabilityDrop".into(), json!(string_list(v, &p)?));
                }
                "sysctls" => {
                    container.insert("Sysctls".into(), Value::Object(string_map(v, &p)?));
                }
                "extra_hosts" => {
                    container.insert("Hosts".into(), json!(extra_hosts(v, &p)?));
                }
                "dns" => {
                    dns.insert("Nameservers".into(), json!(string_list(v, &p)?));
                }
                "dns_search" => {
                    dns.insert("Search".into(), json!(string_list(v, &p)?));
                }
                "healthcheck" => {
                    if let Some(h) = healthcheck(v, &p)? {
                        container.insert("Healthcheck".into(), h);
                    }
                }
                "logging" => {
                    let m = map(v, &p)?;
                    let mut driver = Map::new();
                    for (k, x) in m {
                        let lp = join(&p, k);
                        match k.as_str() {
                            "driver" => {
                                driver.insert("Name".into(), json!(string(x, &lp)?));
                            }
                            "options" => {
                                driver.insert("Options".into(), Value::Object(string_map(x, &lp)?));
                            }
                            _ => return Err(bad(&lp, "unknown logging option")),
                        }
                    }
                    task.insert("LogDriver".into(), Value::Object(driver));
                }
                "ports" => ports = self.ports(v, &p)?,
                "networks" => networks_field = Some(v),
                "secrets" => {
                    let refs = self.file_refs(v, &p, secrets, "secret")?;
                    container.insert("Secrets".into(), Value::Array(refs));
                }
                "configs" => {
                    let refs = self.file_refs(v, &p, configs, "config")?;
                    container.insert("Configs".into(), Value::Array(refs));
                }
                "volumes" => {
                    let mounts = self.mounts(v, &p, volumes)?;
                    container.insert("Mounts".into(), Value::Array(mounts));
                }
                "tmpfs" => {
                    // Each path becomes a tmpfs mount, as the CLI does.
                    let mut mounts = match container.remove("Mounts") {
                        Some(Value::Array(a)) => a,
                        _ => Vec::new(),
                    };
                    for t in string_list(v, &p)? {
                        let target = t.split(':').next().unwrap_or("").to_string();
                        mounts.push(json!({"Type": "tmpfs", "Target": target}));
                    }
                    container.insert("Mounts".into(), Value::Array(mounts));
                }
                "deploy" => deploy = map_or_empty(v, &p)?,
                "container_name" => self.warnings.push(format!(
                    "Ignoring deprecated options: {p}: setting the container name is not supported"
                )),
                "expose" => self.warnings.push(format!(
                    "Ignoring deprecated options: {p}: exposing ports is unnecessary, services on the same network reach each other on any port"
                )),
                k if k.starts_with("x-") => {}
                k => {
                    if let Some((_, why)) = FORBIDDEN_SERVICE_KEYS.iter().find(|(f, _)| *f == k) {
                        return Err(bad(&p, format!("not supported: {why}")));
                    }
                    if IGNORED_SERVICE_KEYS.contains(&k) {
                        self.warnings.push(format!("Ignoring unsupported options: {p}"));
                    } else {
                        self.warnings.push(format!("Ignoring unknown option: {p}"));
                    }
                }
            }
        }
        container.insert(
            "Labels".into(),
            self.stack_labels(labels(svc.get("labels"), &format!("{path}.labels"))?),
        );
        if !dns.is_empty() {
            container.insert("DNSConfig".into(), Value::Object(dns));
        }

        // Networks: the listed ones, or the stack's default network.
        let attachments =
            self.service_networks(networks_field, name, &format!("{path}.networks"))?;

        let mut spec = Map::new();
        spec.insert("Name".into(), json!(full));
        let mut endpoint = Map::new();
        let mut mode = json!({"Replicated": {}});
        let mut service_labels = Map::new();
        task.insert("Resources".into(), json!({}));
        task.insert("Placement".into(), json!({}));
        let dp = format!("{path}.deploy");
        let mut replicas: Option<u64> = None;
        let mut mode_name = "replicated".to_string();
        for (key, v) in &deploy {
            let p = join(&dp, key);
            match key.as_str() {
                "mode" => mode_name = string(v, &p)?,
                "replicas" => replicas = Some(uint(v, &p)?),
                "labels" => service_labels = labels(Some(v), &p)?,
                "placement" => {
                    task.insert("Placement".into(), placement(v, &p)?);
                }
                "resources" => {
                    task.insert("Resources".into(), resources(v, &p)?);
                }
                "restart_policy" => {
                    task.insert("RestartPolicy".into(), restart_policy(v, &p)?);
                }
                "update_config" => {
                    spec.insert("UpdateConfig".into(), update_config(v, &p)?);
                }
                "rollback_config" => {
                    spec.insert("RollbackConfig".into(), update_config(v, &p)?);
                }
                "endpoint_mode" => {
                    let m = string(v, &p)?.to_ascii_lowercase();
                    if m != "vip" && m != "dnsrr" {
                        return Err(bad(
                            &p,
                            format!("invalid endpoint mode {m:?} (vip or dnsrr)"),
                        ));
                    }
                    endpoint.insert("Mode".into(), json!(m));
                }
                k if k.starts_with("x-") => {}
                _ => self
                    .warnings
                    .push(format!("Ignoring unsupported options: {p}")),
            }
        }
        let mp = format!("{dp}.mode");
        let rp = format!("{dp}.replicas");
        match mode_name.as_str() {
            "replicated" | "" => {
                if let Some(n) = replicas {
                    mode = json!({"Replicated": {"Replicas": n}});
                }
            }
            "global" | "global-job" => {
                if replicas.is_some() {
                    return Err(bad(
                        &rp,
                        "replicas can only be used with replicated or replicated-job mode",
                    ));
                }
                mode = if mode_name == "global" {
                    json!({"Global": {}})
                } else {
                    json!({"GlobalJob": {}})
                };
            }
            "replicated-job" => {
                mode = match replicas {
                    Some(n) => {
                        json!({"ReplicatedJob": {"MaxConcurrent": n, "TotalCompletions": n}})
                    }
                    None => json!({"ReplicatedJob": {}}),
                };
            }
            m => {
                return Err(bad(
                    &mp,
                    format!(
                        "unknown mode {m:?} (replicated, global, replicated-job or global-job)"
                    ),
                ))
            }
        }
        let mut labels = match self.stack_labels(service_labels) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        labels.insert(LABEL_IMAGE.into(), json!(image));
        spec.insert("Labels".into(), Value::Object(labels));
        task.insert("ContainerSpec".into(), Value::Object(container));
        task.insert("Networks".into(), Value::Array(attachments));
        spec.insert("TaskTemplate".into(), Value::Object(task));
        spec.insert("Mode".into(), mode);
        endpoint.insert("Ports".into(), Value::Array(ports));
        spec.insert("EndpointSpec".into(), Value::Object(endpoint));
        Ok(Value::Object(spec))
    }

    fn service_networks(
        &mut self,
        v: Option<&Value>,
        service: &str,
        path: &str,
    ) -> Result<Vec<Value>> {
        // name -> aliases
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        match v {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, x) in items.iter().enumerate() {
                    wanted.insert(string(x, &format!("{path}[{i}]"))?, Vec::new());
                }
            }
            Some(Value::Object(m)) => {
                for (k, x) in m {
                    let p = join(path, k);
                    let mut aliases = Vec::new();
                    match x {
                        Value::Null => {}
                        Value::Object(o) => {
                            for (ok, ov) in o {
                                let op = join(&p, ok);
                                match ok.as_str() {
                                    "aliases" => aliases = string_list(ov, &op)?,
                                    _ => self
                                        .warnings
                                        .push(format!("Ignoring unsupported options: {op}")),
                                }
                            }
                        }
                        _ => return Err(bad(&p, "must be a mapping (aliases) or empty")),
                    }
                    wanted.insert(k.clone(), aliases);
                }
            }
            Some(_) => return Err(bad(path, "must be a list or a mapping of network names")),
        }
        if wanted.is_empty() {
            wanted.insert("default".into(), Vec::new());
        }
        let mut out = Vec::new();
        for (net, mut aliases) in wanted {
            let def = self.networks.get(&net);
            if def.is_none() && net != "default" {
                return Err(bad(path, format!("undefined network {net:?}")));
            }
            let target = self.network_name(&net)?;
            if !matches!(target.as_str(), "host" | "bridge" | "none" | "default") {
                aliases.push(service.to_string());
            }
            self.used_networks.insert(net);
            let mut a = Map::new();
            a.insert("Target".into(), json!(target));
            if !aliases.is_empty() {
                a.insert("Aliases".into(), json!(aliases));
            }
            out.push(Value::Object(a));
        }
        out.sort_by(|a, b| a["Target"].as_str().cmp(&b["Target"].as_str()));
        Ok(out)
    }

    /// The network's name in the cluster: `name:`, the plain key if external, else scoped.
    fn network_name(&self, key: &str) -> Result<String> {
        let path = join("networks", key);
        let Some(def) = self.networks.get(key) else {
            return Ok(self.scope(key));
        };
        if let Some(name) = external_name(def, key, &path, &[])? {
            return Ok(name);
        }
        match def.get("name") {
            Some(n) => string(n, &format!("{path}.name")),
            None => Ok(self.scope(key)),
        }
    }

    fn networks_to_create(&mut self) -> Result<(Vec<Named>, Vec<String>)> {
        let mut create = BTreeMap::new();
        let mut external = BTreeSet::new();
        let used = std::mem::take(&mut self.used_networks);
        for key in &used {
            let path = join("networks", key);
            let empty = Map::new();
            let def = self.networks.get(key).unwrap_or(&empty);
            if let Some(name) = external_name(def, key, &path, &[])? {
                external.insert(name);
                continue;
            }
            let name = self.network_name(key)?;
            let mut body = Map::new();
            body.insert("Name".into(), json!(name));
            body.insert("Driver".into(), json!("overlay"));
            body.insert("Scope".into(), json!("swarm"));
            let mut net_labels = Map::new();
            for (k, v) in def {
                let p = join(&path, k);
                match k.as_str() {
                    "name" | "external" => {}
                    "driver" => {
                        body.insert("Driver".into(), json!(string(v, &p)?));
                    }
                    "driver_opts" => {
                        body.insert("Options".into(), Value::Object(string_map(v, &p)?));
                    }
                    "attachable" => {
                        body.insert("Attachable".into(), json!(boolean(v, &p)?));
                    }
                    "internal" => {
                        body.insert("Internal".into(), json!(boolean(v, &p)?));
                    }
                    "enable_ipv6" => {
                        body.insert("EnableIPv6".into(), json!(boolean(v, &p)?));
                    }
                    "labels" => net_labels = labels(Some(v), &p)?,
                    "ipam" => {
                        body.insert("IPAM".into(), ipam(v, &p)?);
                    }
                    k if k.starts_with("x-") => {}
                    _ => self
                        .warnings
                        .push(format!("Ignoring unsupported options: {p}")),
                }
            }
            body.insert("Labels".into(), self.stack_labels(net_labels));
            create.insert(name, Value::Object(body));
        }
        self.used_networks = used;
        Ok((create.into_iter().collect(), external.into_iter().collect()))
    }

    fn ports(&mut self, v: &Value, path: &str) -> Result<Vec<Value>> {
        let items = match v {
            Value::Null => return Ok(Vec::new()),
            Value::Array(a) => a,
            _ => return Err(bad(path, "must be a list")),
        };
        let mut out: Vec<(String, u16, u16, String)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match item {
                Value::Object(m) => {
                    let mut target = None;
                    let mut published: Option<Vec<u16>> = None;
                    let mut protocol = "tcp".to_string();
                    let mut mode = "ingress".to_string();
                    for (k, x) in m {
                        let kp = join(&p, k);
                        match k.as_str() {
                            "target" => target = Some(port_number(x, &kp)?),
                            "published" => {
                                let s = scalar(x, &kp)?;
                                if !s.is_empty() {
                                    published =
                                        Some(port_range(&s).ok_or_else(|| {
                                            bad(&kp, format!("invalid port {s:?}"))
                                        })?);
                                }
                            }
                            "protocol" => protocol = protocol_name(&string(x, &kp)?, &kp)?,
                            "mode" => {
                                mode = string(x, &kp)?;
                                if mode != "ingress" && mode != "host" {
                                    return Err(bad(
                                        &kp,
                                        format!("invalid mode {mode:?} (ingress or host)"),
                                    ));
                                }
                            }
                            _ => self
                                .warnings
                                .push(format!("Ignoring unsupported options: {kp}")),
                        }
                    }
                    let target = target.ok_or_else(|| bad(&p, "target is required"))?;
                    match published.as_deref() {
                        None => out.push((protocol, target, 0, mode)),
                        Some([one]) => out.push((protocol, target, *one, mode)),
                        Some(_) => {
                            return Err(bad(
                                &p,
                                "a published range needs a target range: use the short syntax",
                            ))
                        }
                    }
                }
                Value::String(_) | Value::Number(_) => {
                    let s = scalar(item, &p)?;
                    let (specs, host_ip) =
                        parse_port(&s).ok_or_else(|| bad(&p, format!("invalid port {s:?}")))?;
                    if host_ip {
                        self.warnings.push(format!("Ignoring unsupported options: {p}: host IP (swarm publishes on every address)"));
                    }
                    for (proto, target, published) in specs {
                        out.push((proto, target, published, "ingress".into()));
                    }
                }
                _ => return Err(bad(&p, "must be a string such as \"8080:80\" or a mapping")),
            }
            if out.len() > MAX_PORTS {
                return Err(bad(path, "too many ports"));
            }
        }
        out.sort();
        out.dedup();
        Ok(out
            .into_iter()
            .map(|(proto, target, published, mode)| {
                let mut m = Map::new();
                m.insert("Protocol".into(), json!(proto));
                m.insert("TargetPort".into(), json!(target));
                if published != 0 {
                    m.insert("PublishedPort".into(), json!(published));
                }
                m.insert("PublishMode".into(), json!(mode));
                Value::Object(m)
            })
            .collect())
    }

    fn file_refs(
        &mut self,
        v: &Value,
        path: &str,
        defined: &BTreeMap<String, String>,
        kind: &str,
    ) -> Result<Vec<Value>> {
        let items = match v {
            Value::Null => return Ok(Vec::new()),
            Value::Array(a) => a,
            _ => return Err(bad(path, "must be a list")),
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let (source, target, uid, gid, mode) = match item {
                Value::String(s) => (s.clone(), None, None, None, None),
                Value::Object(m) => {
                    let mut source = None;
                    let (mut target, mut uid, mut gid, mut mode) = (None, None, None, None);
                    for (k, x) in m {
                        let kp = join(&p, k);
                        match k.as_str() {
                            "source" => source = Some(string(x, &kp)?),
                            "target" => target = Some(string(x, &kp)?),
                            "uid" => uid = Some(scalar(x, &kp)?),
                            "gid" => gid = Some(scalar(x, &kp)?),
                            "mode" => mode = Some(file_mode(x, &kp)?),
                            _ => self
                                .warnings
                                .push(format!("Ignoring unsupported options: {kp}")),
                        }
                    }
                    (
                        source.ok_or_else(|| bad(&p, "source is required"))?,
                        target,
                        uid,
                        gid,
                        mode,
                    )
                }
                _ => return Err(bad(&p, format!("must be a {kind} name or a mapping"))),
            };
            let Some(name) = defined.get(&source) else {
                return Err(bad(&p, format!("undefined {kind} {source:?}")));
            };
            if kind == "secret" {
                self.used_secrets.insert(source.clone());
            } else {
                self.used_configs.insert(source.clone());
            }
            let file = json!({
                "Name": target.unwrap_or_else(|| source.clone()),
                "UID": uid.unwrap_or_else(|| "0".into()),
                "GID": gid.unwrap_or_else(|| "0".into()),
                "Mode": mode.unwrap_or(0o444),
            });
            out.push(if kind == "secret" {
                json!({"SecretName": name, "SecretID": "", "File": file})
            } else {
                json!({"ConfigName": name, "ConfigID": "", "File": file})
            });
        }
        let key = if kind == "secret" {
            "SecretName"
        } else {
            "ConfigName"
        };
        out.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
        Ok(out)
    }

    fn mounts(
        &mut self,
        v: &Value,
        path: &str,
        volumes: &BTreeMap<String, VolumeDef>,
    ) -> Result<Vec<Value>> {
        let items = match v {
            Value::Null => return Ok(Vec::new()),
            Value::Array(a) => a,
            _ => return Err(bad(path, "must be a list")),
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let mut m = MountSpec::default();
            match item {
                Value::String(s) => parse_volume_short(s, &p, &mut m)?,
                Value::Object(o) => {
                    for (k, x) in o {
                        let kp = join(&p, k);
                        match k.as_str() {
                            "type" => m.kind = string(x, &kp)?,
                            "source" => m.source = string(x, &kp)?,
                            "target" => m.target = string(x, &kp)?,
                            "read_only" => m.read_only = boolean(x, &kp)?,
                            "bind" => {
                                for (bk, bx) in map(x, &kp)? {
                                    let bp = join(&kp, bk);
                                    match bk.as_str() {
                                        "propagation" => m.propagation = Some(string(bx, &bp)?),
                                        _ => self
                                            .warnings
                                            .push(format!("Ignoring unsupported options: {bp}")),
                                    }
                                }
                            }
                            "volume" => {
                                for (vk, vx) in map(x, &kp)? {
                                    let vp = join(&kp, vk);
                                    match vk.as_str() {
                                        "nocopy" => m.nocopy = boolean(vx, &vp)?,
                                        _ => self
                                            .warnings
                                            .push(format!("Ignoring unsupported options: {vp}")),
                                    }
                                }
                            }
                            "tmpfs" => {
                                for (tk, tx) in map(x, &kp)? {
                                    let tp = join(&kp, tk);
                                    match tk.as_str() {
                                        "size" => m.tmpfs_size = Some(bytes(tx, &tp)?),
                                        "mode" => m.tmpfs_mode = Some(file_mode(tx, &tp)?),
                                        _ => self
                                            .warnings
                                            .push(format!("Ignoring unsupported options: {tp}")),
                                    }
                                }
                            }
                            "consistency" => {}
                            _ => self
                                .warnings
                                .push(format!("Ignoring unsupported options: {kp}")),
                        }
                    }
                    if m.kind.is_empty() {
                        return Err(bad(&p, "type is required (volume, bind or tmpfs)"));
                    }
                }
                _ => {
                    return Err(bad(
                        &p,
                        "must be a string such as \"data:/var/lib/data\" or a mapping",
                    ))
                }
            }
            if !m.target.starts_with('/') {
                return Err(bad(
                    &p,
                    format!("the target {:?} must be an absolute path", m.target),
                ));
            }
            let mut mount = Map::new();
            mount.insert("Type".into(), json!(m.kind));
            mount.insert("Target".into(), json!(m.target));
            if m.read_only {
                mount.insert("ReadOnly".into(), json!(true));
            }
            match m.kind.as_str() {
                "volume" => {
                    let mut opts = Map::new();
                    if m.nocopy {
                        opts.insert("NoCopy".into(), json!(true));
                    }
                    if !m.source.is_empty() {
                        let Some(def) = volumes.get(&m.source) else {
                            return Err(bad(&p, format!("undefined volume {:?}", m.source)));
                        };
                        let source = if def.name.is_empty() {
                            self.scope(&m.source)
                        } else {
                            def.name.clone()
                        };
                        mount.insert("Source".into(), json!(source));
                        if !def.external {
                            opts.insert("Labels".into(), self.stack_labels(def.labels.clone()));
                            if def.driver.is_some() || !def.driver_opts.is_empty() {
                                let mut d = Map::new();
                                d.insert(
                                    "Name".into(),
                                    json!(def.driver.clone().unwrap_or_default()),
                                );
                                if !def.driver_opts.is_empty() {
                                    d.insert(
                                        "Options".into(),
                                        Value::Object(def.driver_opts.clone()),
                                    );
                                }
                                opts.insert("DriverConfig".into(), Value::Object(d));
                            }
                        }
                    }
                    if !opts.is_empty() {
                        mount.insert("VolumeOptions".into(), Value::Object(opts));
                    }
                }
                "bind" => {
                    if !m.source.starts_with('/') {
                        return Err(bad(
                            &p,
                            format!("the bind source {:?} must be an absolute path on the nodes (a pasted file has no directory to be relative to)", m.source),
                        ));
                    }
                    mount.insert("Source".into(), json!(m.source));
                    if let Some(prop) = m.propagation {
                        const OK: [&str; 6] = [
                            "private", "rprivate", "shared", "rshared", "slave", "rslave",
                        ];
                        if !OK.contains(&prop.as_str()) {
                            return Err(bad(&p, format!("invalid propagation {prop:?}")));
                        }
                        mount.insert("BindOptions".into(), json!({"Propagation": prop}));
                    }
                }
                "tmpfs" => {
                    if !m.source.is_empty() {
                        return Err(bad(&p, "a tmpfs mount has no source"));
                    }
                    let mut t = Map::new();
                    if let Some(size) = m.tmpfs_size {
                        t.insert("SizeBytes".into(), json!(size));
                    }
                    if let Some(mode) = m.tmpfs_mode {
                        t.insert("Mode".into(), json!(mode));
                    }
                    if !t.is_empty() {
                        mount.insert("TmpfsOptions".into(), Value::Object(t));
                    }
                }
                k => {
                    return Err(bad(
                        &p,
                        format!("unsupported mount type {k:?} (volume, bind or tmpfs)"),
                    ))
                }
            }
            out.push(Value::Object(mount));
        }
        Ok(out)
    }
}

#[derive(Default)]
struct MountSpec {
    kind: String,
    source: String,
    target: String,
    read_only: bool,
    nocopy: bool,
    propagation: Option<String>,
    tmpfs_size: Option<i64>,
    tmpfs_mode: Option<u64>,
}

/// `[source:]target[:options]`, options a comma list of ro, rw, nocopy, z, Z and a propagation.
fn parse_volume_short(s: &str, path: &str, m: &mut MountSpec) -> Result<()> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [t] => ("", *t, ""),
        [src, t] => (*src, *t, ""),
        [src, t, o] => (*src, *t, *o),
        _ => return Err(bad(path, format!("invalid volume {s:?}"))),
    };
    if target.is_empty() {
        return Err(bad(path, format!("invalid volume {s:?}")));
    }
    m.target = target.to_string();
    m.source = source.to_string();
    m.kind = if source.starts_with('/') || source.starts_with('.') || source.starts_with('~') {
        "bind".into()
    } else {
        "volume".into()
    };
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => m.read_only = true,
            "rw" => m.read_only = false,
            "nocopy" => m.nocopy = true,
            "z" | "Z" => {}
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                m.propagation = Some(o.to_string())
            }
            _ => return Err(bad(path, format!("invalid volume option {o:?} in {s:?}"))),
        }
    }
    Ok(())
}

/// A file mode: a number (`0o440` in YAML 1.2, or decimal as written) or a string with a
/// leading zero (`"0440"`, which the CLI's YAML 1.1 parser reads as octal).
fn file_mode(v: &Value, path: &str) -> Result<u64> {
    let mode = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let digits = s
                .strip_prefix("0o")
                .or_else(|| s.strip_prefix('0'))
                .unwrap_or(s);
            if s.starts_with('0') {
                if digits.is_empty() {
                    Some(0)
                } else {
                    u64::from_str_radix(digits, 8).ok()
                }
            } else {
                s.parse().ok()
            }
        }
        _ => None,
    };
    match mode {
        Some(m) if m <= 0o7777 => Ok(m),
        _ => Err(bad(path, "invalid file mode (write it as 0440)")),
    }
}

fn extra_hosts(v: &Value, path: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    match v {
        Value::Object(m) => {
            for (host, ip) in m {
                out.push(format!("{} {host}", scalar(ip, &join(path, host))?));
            }
        }
        _ => {
            for (i, entry) in string_list(v, path)?.into_iter().enumerate() {
                let sep = entry.find([':', '=']);
                match sep {
                    Some(at) => {
                        let (host, ip) = entry.split_at(at);
                        let ip = ip.get(1..).unwrap_or("");
                        out.push(format!("{ip} {host}"));
                    }
                    None => {
                        return Err(bad(
                            &format!("{path}[{i}]"),
                            format!("invalid extra host {entry:?} (host:ip)"),
                        ))
                    }
                }
            }
        }
    }
    Ok(out)
}

fn healthcheck(v: &Value, path: &str) -> Result<Option<Value>> {
    let m = match v {
        Value::Null => return Ok(None),
        v => map(v, path)?,
    };
    let mut h = Map::new();
    let mut disable = false;
    for (k, x) in m {
        let p = join(path, k);
        match k.as_str() {
            "test" => {
                let test = match x {
                    Value::String(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                    x => string_list(x, &p)?,
                };
                h.insert("Test".into(), json!(test));
            }
            "interval" => {
                h.insert("Interval".into(), json!(duration(x, &p)?));
            }
            "timeout" => {
                h.insert("Timeout".into(), json!(duration(x, &p)?));
            }
            "start_period" => {
                h.insert("StartPeriod".into(), json!(duration(x, &p)?));
            }
            "start_interval" => {
                h.insert("StartInterval".into(), json!(duration(x, &p)?));
            }
            "retries" => {
                h.insert("Retries".into(), json!(uint(x, &p)?));
            }
            "disable" => disable = boolean(x, &p)?,
            _ => return Err(bad(&p, "unknown healthcheck option")),
        }
    }
    if disable {
        if h.get("Test")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty())
        {
            return Err(bad(path, "test and disable can't be set at the same time"));
        }
        return Ok(Some(json!({"Test": ["NONE"]})));
    }
    Ok(Some(Value::Object(h)))
}

fn placement(v: &Value, path: &str) -> Result<Value> {
    let mut out = Map::new();
    if let Value::Null = v {
        return Ok(Value::Object(out));
    }
    for (k, x) in map(v, path)? {
        let p = join(path, k);
        match k.as_str() {
            "constraints" => {
                out.insert("Constraints".into(), json!(string_list(x, &p)?));
            }
            "preferences" => {
                let mut prefs = Vec::new();
                let items = match x {
                    Value::Array(a) => a.clone(),
                    Value::Null => Vec::new(),
                    _ => return Err(bad(&p, "must be a list of {spread: ...}")),
                };
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    let spread = map(item, &ip)?
                        .get("spread")
                        .ok_or_else(|| bad(&ip, "spread is required"))?;
                    prefs.push(json!({"Spread": {"SpreadDescriptor": string(spread, &format!("{ip}.spread"))?}}));
                }
                out.insert("Preferences".into(), Value::Array(prefs));
            }
            "max_replicas_per_node" => {
                out.insert("MaxReplicas".into(), json!(uint(x, &p)?));
            }
            _ => return Err(bad(&p, "unknown placement option")),
        }
    }
    Ok(Value::Object(out))
}

fn resources(v: &Value, path: &str) -> Result<Value> {
    let mut out = Map::new();
    if let Value::Null = v {
        return Ok(Value::Object(out));
    }
    for (k, x) in map(v, path)? {
        let p = join(path, k);
        let field = match k.as_str() {
            "limits" => "Limits",
            "reservations" => "Reservations",
            _ => return Err(bad(&p, "unknown resources option (limits or reservations)")),
        };
        let mut r = Map::new();
        if !x.is_null() {
            for (rk, rx) in map(x, &p)? {
                let rp = join(&p, rk);
                match (field, rk.as_str()) {
                    (_, "cpus") => {
                        r.insert("NanoCPUs".into(), json!(nano_cpus(rx, &rp)?));
                    }
                    (_, "memory") => {
                        r.insert("MemoryBytes".into(), json!(bytes(rx, &rp)?));
                    }
                    ("Limits", "pids") => {
                        r.insert("Pids".into(), json!(uint(rx, &rp)?));
                    }
                    ("Reservations", "generic_resources") => {
                        r.insert("GenericResources".into(), generic_resources(rx, &rp)?);
                    }
                    _ => return Err(bad(&rp, "unknown resource")),
                }
            }
        }
        out.insert(field.into(), Value::Object(r));
    }
    Ok(Value::Object(out))
}

fn generic_resources(v: &Value, path: &str) -> Result<Value> {
    let items = match v {
        Value::Array(a) => a,
        Value::Null => return Ok(json!([])),
        _ => return Err(bad(path, "must be a list")),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let spec = map(item, &p)?
            .get("discrete_resource_spec")
            .ok_or_else(|| bad(&p, "discrete_resource_spec is required"))?;
        let sp = format!("{p}.discrete_resource_spec");
        let spec = map(spec, &sp)?;
        let kind = string(
            spec.get("kind")
                .ok_or_else(|| bad(&sp, "kind is required"))?,
            &format!("{sp}.kind"),
        )?;
        let value = uint(
            spec.get("value")
                .ok_or_else(|| bad(&sp, "value is required"))?,
            &format!("{sp}.value"),
        )?;
        out.push(json!({"DiscreteResourceSpec": {"Kind": kind, "Value": value}}));
    }
    Ok(Value::Array(out))
}

fn restart_policy(v: &Value, path: &str) -> Result<Value> {
    let mut out = Map::new();
    if let Value::Null = v {
        return Ok(Value::Object(out));
    }
    for (k, x) in map(v, path)? {
        let p = join(path, k);
        match k.as_str() {
            "condition" => {
                let c = string(x, &p)?;
                if !matches!(c.as_str(), "none" | "on-failure" | "any") {
                    return Err(bad(
                        &p,
                        format!("invalid condition {c:?} (none, on-failure or any)"),
                    ));
                }
                out.insert("Condition".into(), json!(c));
            }
            "delay" => {
                out.insert("Delay".into(), json!(duration(x, &p)?));
            }
            "max_attempts" => {
                out.insert("MaxAttempts".into(), json!(uint(x, &p)?));
            }
            "window" => {
                out.insert("Window".into(), json!(duration(x, &p)?));
            }
            _ => return Err(bad(&p, "unknown restart_policy option")),
        }
    }
    Ok(Value::Object(out))
}

fn update_config(v: &Value, path: &str) -> Result<Value> {
    let mut out = Map::new();
    out.insert("Parallelism".into(), json!(1));
    if let Value::Null = v {
        return Ok(Value::Object(out));
    }
    for (k, x) in map(v, path)? {
        let p = join(path, k);
        match k.as_str() {
            "parallelism" => {
                out.insert("Parallelism".into(), json!(uint(x, &p)?));
            }
            "delay" => {
                out.insert("Delay".into(), json!(duration(x, &p)?));
            }
            "monitor" => {
                out.insert("Monitor".into(), json!(duration(x, &p)?));
            }
            "failure_action" => {
                let a = string(x, &p)?;
                if !matches!(a.as_str(), "continue" | "pause" | "rollback") {
                    return Err(bad(
                        &p,
                        format!("invalid failure_action {a:?} (continue, pause or rollback)"),
                    ));
                }
                out.insert("FailureAction".into(), json!(a));
            }
            "max_failure_ratio" => {
                let r = match x {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.parse::<f64>().ok(),
                    _ => None,
                };
                match r {
                    Some(r) if (0.0..=1.0).contains(&r) => {
                        out.insert("MaxFailureRatio".into(), json!(r));
                    }
                    _ => return Err(bad(&p, "must be a number from 0 to 1")),
                }
            }
            "order" => {
                let o = string(x, &p)?;
                if !matches!(o.as_str(), "start-first" | "stop-first") {
                    return Err(bad(
                        &p,
                        format!("invalid order {o:?} (start-first or stop-first)"),
                    ));
                }
                out.insert("Order".into(), json!(o));
            }
            _ => return Err(bad(&p, "unknown update option")),
        }
    }
    Ok(Value::Object(out))
}

fn ipam(v: &Value, path: &str) -> Result<Value> {
    let mut out = Map::new();
    if let Value::Null = v {
        return Ok(Value::Object(out));
    }
    for (k, x) in map(v, path)? {
        let p = join(path, k);
        match k.as_str() {
            "driver" => {
                out.insert("Driver".into(), json!(string(x, &p)?));
            }
            "options" => {
                out.insert("Options".into(), Value::Object(string_map(x, &p)?));
            }
            "config" => {
                let items = match x {
                    Value::Array(a) => a,
                    _ => return Err(bad(&p, "must be a list")),
                };
                let mut configs = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    let mut c = Map::new();
                    for (ck, cx) in map(item, &ip)? {
                        let cp = join(&ip, ck);
                        let field = match ck.as_str() {
                            "subnet" => "Subnet",
                            "gateway" => "Gateway",
                            "ip_range" => "IPRange",
                            _ => {
                                return Err(bad(
                                    &cp,
                                    "unknown IPAM option (subnet, gateway, ip_range)",
                                ))
                            }
                        };
                        c.insert(field.into(), json!(string(cx, &cp)?));
                    }
                    configs.push(Value::Object(c));
                }
                out.insert("Config".into(), Value::Array(configs));
            }
            _ => return Err(bad(&p, "unknown IPAM option")),
        }
    }
    Ok(Value::Object(out))
}

fn protocol_name(s: &str, path: &str) -> Result<String> {
    let p = s.to_ascii_lowercase();
    match p.as_str() {
        "tcp" | "udp" | "sctp" => Ok(p),
        _ => Err(bad(
            path,
            format!("invalid protocol {s:?} (tcp, udp or sctp)"),
        )),
    }
}

fn port_number(v: &Value, path: &str) -> Result<u16> {
    let s = scalar(v, path)?;
    match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad(path, format!("invalid port {s:?}"))),
    }
}

/// "80" or "8000-8010" as the list of its ports (1..=65535).
fn port_range(s: &str) -> Option<Vec<u16>> {
    let one = |p: &str| -> Option<u16> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse::<u16>().ok().filter(|n| *n > 0)
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            (a <= b).then(|| (a..=b).collect())
        }
        None => Some(vec![one(s)?]),
    }
}

/// Short port syntax: `[[ip:][published]:]target[/protocol]` with ranges; returns
/// (protocol, target, published or 0) for each port and whether a host IP was given.
fn parse_port(s: &str) -> Option<(Vec<PortTriple>, bool)> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((spec, proto)) => (spec, protocol_name(proto, "").ok()?),
        None => (s, "tcp".to_string()),
    };
    // A bracketed IPv6 host address first, then at most published:target.
    let (host_ip, rest) = match spec.strip_prefix('[') {
        Some(r) => {
            let (_, after) = r.split_once(']')?;
            (true, after.strip_prefix(':')?)
        }
        None => (false, spec),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, published, target) = match parts.as_slice() {
        [t] => (host_ip, "", *t),
        [p, t] if !host_ip => (false, *p, *t),
        [p, t] => (true, *p, *t),
        [ip, p, t] if !host_ip => (!ip.is_empty(), *p, *t),
        _ => return None,
    };
    let targets = port_range(target)?;
    let published: Vec<u16> = if published.is_empty() {
        Vec::new()
    } else {
        port_range(published)?
    };
    let pairs: Vec<(String, u16, u16)> = if published.is_empty() {
        targets.iter().map(|t| (proto.clone(), *t, 0)).collect()
    } else if published.len() == targets.len() {
        targets
            .iter()
            .zip(&published)
            .map(|(t, p)| (proto.clone(), *t, *p))
            .collect()
    } else {
        return None;
    };
    Some((pairs, ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(yaml: &str) -> StackPlan {
        match plan("st", yaml) {
            Ok(p) => p,
            Err(e) => panic!("plan failed: {e}\n{yaml}"),
        }
    }

    fn err(yaml: &str) -> String {
        match plan("st", yaml) {
            Ok(p) => panic!("expected an error, got {p:?}\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    /// The one service's spec.
    fn svc(yaml: &str) -> Value {
        let p = ok(yaml);
        assert_eq!(p.services.len(), 1, "{p:?}");
        p.services[0].1.clone()
    }

    /// `a.b[0].c` -> the JSON at that path.
    fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
        let mut cur = v;
        for part in path.split('.') {
            let (key, idx) = match part.split_once('[') {
                Some((k, i)) => (k, Some(i.trim_end_matches(']').parse::<usize>().unwrap())),
                None => (part, None),
            };
            if !key.is_empty() {
                cur = cur
                    .get(key)
                    .unwrap_or_else(|| panic!("no {key} in {cur} (path {path})"));
            }
            if let Some(i) = idx {
                cur = cur
                    .get(i)
                    .unwrap_or_else(|| panic!("no [{i}] in {cur} (path {path})"));
            }
        }
        cur
    }

    #[test]
    fn minimal_service_gets_names_labels_default_network() {
        let p = ok("services:\n  web:\n    image: nginx:1.27\n");
        assert_eq!(p.services[0].0, "st_web");
        let s = &p.services[0].1;
        assert_eq!(at(s, "Name"), "st_web");
        assert_eq!(
            at(s, "Labels"),
            &json!({LABEL_NAMESPACE: "st", LABEL_IMAGE: "nginx:1.27"})
        );
        assert_eq!(at(s, "TaskTemplate.ContainerSpec.Image"), "nginx:1.27");
        assert_eq!(
            at(s, "TaskTemplate.ContainerSpec.Labels"),
            &json!({LABEL_NAMESPACE: "st"})
        );
        assert_eq!(
            at(s, "TaskTemplate.Networks"),
            &json!([{"Target": "st_default", "Aliases": ["web"]}])
        );
        assert_eq!(at(s, "Mode"), &json!({"Replicated": {}}));
        assert_eq!(at(s, "EndpointSpec"), &json!({"Ports": []}));
        assert_eq!(p.networks.len(), 1);
        assert_eq!(p.networks[0].0, "st_default");
        assert_eq!(
            p.networks[0].1,
            json!({"Name": "st_default", "Driver": "overlay", "Scope": "swarm", "Labels": {LABEL_NAMESPACE: "st"}})
        );
        assert!(p.external_networks.is_empty() && p.warnings.is_empty());
    }

    /// (compose service body, JSON path in the spec, expected value)
    const TABLE: &[(&str, &str, &str)] = &[
        ("command: echo hi 'a b' \"c \\\" d\"", "TaskTemplate.ContainerSpec.Args", r#"["echo","hi","a b","c \" d"]"#),
        ("command: [\"sh\", \"-c\", \"x y\"]", "TaskTemplate.ContainerSpec.Args", r#"["sh","-c","x y"]"#),
        ("entrypoint: /bin/sh -c", "TaskTemplate.ContainerSpec.Command", r#"["/bin/sh","-c"]"#),
        ("entrypoint: [tini, --]", "TaskTemplate.ContainerSpec.Command", r#"["tini","--"]"#),
        ("environment: [B=2, A=1, C]", "TaskTemplate.ContainerSpec.Env", r#"["A=1","B=2","C"]"#),
        ("environment: {B: 2, A: x=y, C: null, D: true}", "TaskTemplate.ContainerSpec.Env", r#"["A=x=y","B=2","C","D=true"]"#),
        ("environment: {P: $$HOME}", "TaskTemplate.ContainerSpec.Env", r#"["P=$HOME"]"#),
        ("labels: {a: b}", "TaskTemplate.ContainerSpec.Labels", r#"{"a":"b","com.docker.stack.namespace":"st"}"#),
        ("labels: [a=b, c]", "TaskTemplate.ContainerSpec.Labels", r#"{"a":"b","c":"","com.docker.stack.namespace":"st"}"#),
        ("hostname: h1", "TaskTemplate.ContainerSpec.Hostname", r#""h1""#),
        ("user: 1000", "TaskTemplate.ContainerSpec.User", r#""1000""#),
        ("user: \"1000:1000\"", "TaskTemplate.ContainerSpec.User", r#""1000:1000""#),
        ("working_dir: /app", "TaskTemplate.ContainerSpec.Dir", r#""/app""#),
        ("stop_grace_period: 1m30s", "TaskTemplate.ContainerSpec.StopGracePeriod", "90000000000"),
        ("stop_signal: SIGINT", "TaskTemplate.ContainerSpec.StopSignal", r#""SIGINT""#),
        ("tty: true", "TaskTemplate.ContainerSpec.TTY", "true"),
        ("read_only: yes", "TaskTemplate.ContainerSpec.ReadOnly", "true"),
        ("init: true", "TaskTemplate.ContainerSpec.Init", "true"),
        ("cap_add: [NET_ADMIN]", "TaskTemplate.ContainerSpec.CapabilityAdd", r#"["NET_ADMIN"]"#),
        ("extra_hosts: [\"db:10.0.0.5\", \"v6:::1\"]", "TaskTemplate.ContainerSpec.Hosts", r#"["10.0.0.5 db","::1 v6"]"#),
        ("dns: 1.1.1.1", "TaskTemplate.ContainerSpec.DNSConfig", r#"{"Nameservers":["1.1.1.1"]}"#),
        ("sysctls: {net.core.somaxconn: 1024}", "TaskTemplate.ContainerSpec.Sysctls", r#"{"net.core.somaxconn":"1024"}"#),
        ("logging: {driver: json-file, options: {max-size: 10m}}", "TaskTemplate.LogDriver", r#"{"Name":"json-file","Options":{"max-size":"10m"}}"#),
        // ports
        ("ports: [\"8080:80\"]", "EndpointSpec.Ports", r#"[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"}]"#),
        ("ports: [\"80\"]", "EndpointSpec.Ports", r#"[{"Protocol":"tcp","TargetPort":80,"PublishMode":"ingress"}]"#),
        ("ports: [53]", "EndpointSpec.Ports", r#"[{"Protocol":"tcp","TargetPort":53,"PublishMode":"ingress"}]"#),
        ("ports: [\"5353:53/udp\"]", "EndpointSpec.Ports", r#"[{"Protocol":"udp","TargetPort":53,"PublishedPort":5353,"PublishMode":"ingress"}]"#),
        ("ports: [\"9000-9001:8000-8001\"]", "EndpointSpec.Ports", r#"[{"Protocol":"tcp","TargetPort":8000,"PublishedPort":9000,"PublishMode":"ingress"},{"Protocol":"tcp","TargetPort":8001,"PublishedPort":9001,"PublishMode":"ingress"}]"#),
        ("ports: [{target: 80, published: 8080, protocol: tcp, mode: host}]", "EndpointSpec.Ports", r#"[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"host"}]"#),
        ("ports: [{target: 80, published: \"8081\"}]", "EndpointSpec.Ports[0].PublishedPort", "8081"),
        ("ports: [{target: 80}]", "EndpointSpec.Ports", r#"[{"Protocol":"tcp","TargetPort":80,"PublishMode":"ingress"}]"#),
        // healthcheck
        ("healthcheck: {test: [CMD, curl, -f, http://x], interval: 10s, timeout: 500ms, retries: 3, start_period: 1m}", "TaskTemplate.ContainerSpec.Healthcheck",
         r#"{"Test":["CMD","curl","-f","http://x"],"Interval":10000000000,"Timeout":500000000,"Retries":3,"StartPeriod":60000000000}"#),
        ("healthcheck: {test: curl -f http://x}", "TaskTemplate.ContainerSpec.Healthcheck.Test", r#"["CMD-SHELL","curl -f http://x"]"#),
        ("healthcheck: {disable: true}", "TaskTemplate.ContainerSpec.Healthcheck", r#"{"Test":["NONE"]}"#),
        // deploy
        ("deploy: {replicas: 3}", "Mode", r#"{"Replicated":{"Replicas":3}}"#),
        ("deploy: {mode: global}", "Mode", r#"{"Global":{}}"#),
        ("deploy: {mode: global-job}", "Mode", r#"{"GlobalJob":{}}"#),
        ("deploy: {mode: replicated-job, replicas: 4}", "Mode", r#"{"ReplicatedJob":{"MaxConcurrent":4,"TotalCompletions":4}}"#),
        ("deploy: {labels: {tier: web}}", "Labels.tier", r#""web""#),
        ("deploy: {endpoint_mode: DNSRR}", "EndpointSpec.Mode", r#""dnsrr""#),
        ("deploy: {placement: {constraints: [node.role==worker], preferences: [{spread: node.labels.zone}], max_replicas_per_node: 2}}", "TaskTemplate.Placement",
         r#"{"Constraints":["node.role==worker"],"Preferences":[{"Spread":{"SpreadDescriptor":"node.labels.zone"}}],"MaxReplicas":2}"#),
        ("deploy: {resources: {limits: {cpus: '0.5', memory: 64M, pids: 100}, reservations: {cpus: 0.25, memory: 1.5g}}}", "TaskTemplate.Resources",
         r#"{"Limits":{"NanoCPUs":500000000,"MemoryBytes":67108864,"Pids":100},"Reservations":{"NanoCPUs":250000000,"MemoryBytes":1610612736}}"#),
        ("deploy: {resources: {reservations: {generic_resources: [{discrete_resource_spec: {kind: gpu, value: 2}}]}}}", "TaskTemplate.Resources.Reservations.GenericResources",
         r#"[{"DiscreteResourceSpec":{"Kind":"gpu","Value":2}}]"#),
        ("deploy: {resources: {limits: {memory: 512}}}", "TaskTemplate.Resources.Limits.MemoryBytes", "512"),
        ("deploy: {resources: {limits: {memory: 100KiB}}}", "TaskTemplate.Resources.Limits.MemoryBytes", "102400"),
        ("deploy: {resources: {limits: {cpus: '2'}}}", "TaskTemplate.Resources.Limits.NanoCPUs", "2000000000"),
        ("deploy: {restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 2m}}", "TaskTemplate.RestartPolicy",
         r#"{"Condition":"on-failure","Delay":5000000000,"MaxAttempts":3,"Window":120000000000}"#),
        ("deploy: {update_config: {parallelism: 2, delay: 10s, failure_action: rollback, monitor: 1m, max_failure_ratio: 0.3, order: start-first}}", "UpdateConfig",
         r#"{"Parallelism":2,"Delay":10000000000,"FailureAction":"rollback","Monitor":60000000000,"MaxFailureRatio":0.3,"Order":"start-first"}"#),
        ("deploy: {rollback_config: {order: stop-first}}", "RollbackConfig", r#"{"Parallelism":1,"Order":"stop-first"}"#),
        // mounts
        ("volumes: [\"/srv/data:/data:ro\"]", "TaskTemplate.ContainerSpec.Mounts", r#"[{"Type":"bind","Source":"/srv/data","Target":"/data","ReadOnly":true}]"#),
        ("volumes: [\"/cache\"]", "TaskTemplate.ContainerSpec.Mounts", r#"[{"Type":"volume","Target":"/cache"}]"#),
        ("volumes: [{type: tmpfs, target: /tmp, tmpfs: {size: 64m}}]", "TaskTemplate.ContainerSpec.Mounts", r#"[{"Type":"tmpfs","Target":"/tmp","TmpfsOptions":{"SizeBytes":67108864}}]"#),
        ("volumes: [{type: bind, source: /a, target: /b, bind: {propagation: rshared}}]", "TaskTemplate.ContainerSpec.Mounts[0].BindOptions", r#"{"Propagation":"rshared"}"#),
        ("tmpfs: [/run, \"/tmp:size=1m\"]", "TaskTemplate.ContainerSpec.Mounts", r#"[{"Type":"tmpfs","Target":"/run"},{"Type":"tmpfs","Target":"/tmp"}]"#),
        ("dns_search: [example.org]", "TaskTemplate.ContainerSpec.DNSConfig", r#"{"Search":["example.org"]}"#),
        ("command: [sh, -c, \"echo $$PATH\"]", "TaskTemplate.ContainerSpec.Args", r#"["sh","-c","echo $PATH"]"#),
        ("ports: [\"127.0.0.1:8080:80\", \"[::1]:53:53/udp\", \"::90\"]", "EndpointSpec.Ports", r#"[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"},{"Protocol":"tcp","TargetPort":90,"PublishMode":"ingress"},{"Protocol":"udp","TargetPort":53,"PublishedPort":53,"PublishMode":"ingress"}]"#),
        ("secrets: []", "TaskTemplate.ContainerSpec.Secrets", "[]"),
        ("deploy: {mode: replicated-job}", "Mode", r#"{"ReplicatedJob":{}}"#),
        ("deploy: {update_config: {}}", "UpdateConfig", r#"{"Parallelism":1}"#),
    ];

    #[test]
    fn host_ips_and_unknown_keys_warn() {
        let p = ok("services:\n  web:\n    image: i\n    ports: [\"127.0.0.1:80:80\", {target: 81, host_ip: 0.0.0.0}]\n    frobnicate: 1\n");
        let w = p.warnings.join("\n");
        assert!(w.contains("services.web.ports[0]: host IP"), "{w}");
        assert!(w.contains("services.web.ports[1].host_ip"), "{w}");
        assert!(
            w.contains("Ignoring unknown option: services.web.frobnicate"),
            "{w}"
        );
    }

    #[test]
    fn table_of_snippets_to_spec_fragments() {
        for (body, path, want) in TABLE {
            let yaml = format!("services:\n  web:\n    image: img\n    {body}\n");
            let spec = svc(&yaml);
            let want: Value = serde_json::from_str(want).unwrap();
            assert_eq!(at(&spec, path), &want, "{body}");
        }
    }

    #[test]
    fn named_volumes_are_scoped_and_labelled_external_ones_not() {
        let s = svc(
            "services:\n  db:\n    image: pg\n    volumes:\n      - data:/var/lib/pg\n      - old:/old:nocopy\n\
             volumes:\n  data:\n    driver: local\n    driver_opts: {type: nfs}\n    labels: {k: v}\n  old:\n    external: true\n",
        );
        assert_eq!(
            at(&s, "TaskTemplate.ContainerSpec.Mounts"),
            &json!([
                {"Type": "volume", "Source": "st_data", "Target": "/var/lib/pg",
                 "VolumeOptions": {"Labels": {"k": "v", LABEL_NAMESPACE: "st"}, "DriverConfig": {"Name": "local", "Options": {"type": "nfs"}}}},
                {"Type": "volume", "Source": "old", "Target": "/old", "VolumeOptions": {"NoCopy": true}}
            ])
        );
    }

    #[test]
    fn networks_defined_external_named_and_aliases() {
        let p = ok("version: '3.8'\nservices:\n  web:\n    image: img\n    networks:\n      front:\n        aliases: [www]\n      outside: {}\n  api:\n    image: img\n    networks: [back]\n\
             networks:\n  front:\n    driver: overlay\n    attachable: true\n    driver_opts: {encrypted: ''}\n    labels: [team=a]\n    ipam: {config: [{subnet: 10.9.0.0/24}]}\n\
             \x20 back:\n    name: shared-back\n  outside:\n    external: true\n    name: proxy\n  unused: {}\n");
        assert_eq!(p.external_networks, vec!["proxy".to_string()]);
        let names: Vec<&str> = p.networks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["shared-back", "st_front"]);
        assert_eq!(
            p.networks[1].1,
            json!({"Name": "st_front", "Driver": "overlay", "Scope": "swarm", "Attachable": true,
                   "Options": {"encrypted": ""}, "Labels": {"team": "a", LABEL_NAMESPACE: "st"},
                   "IPAM": {"Config": [{"Subnet": "10.9.0.0/24"}]}})
        );
        let (name, web) = &p.services[1];
        assert_eq!(name, "st_web");
        assert_eq!(
            at(web, "TaskTemplate.Networks"),
            &json!([{"Target": "proxy", "Aliases": ["web"]}, {"Target": "st_front", "Aliases": ["www", "web"]}])
        );
        assert_eq!(
            at(&p.services[0].1, "TaskTemplate.Networks"),
            &json!([{"Target": "shared-back", "Aliases": ["api"]}])
        );
        // No service on the default network: it is not created.
        assert!(!p.networks.iter().any(|(n, _)| n == "st_default"));
    }

    #[test]
    fn default_network_can_be_declared_external() {
        let p = ok(
            "services:\n  a:\n    image: i\nnetworks:\n  default:\n    external: {name: host}\n",
        );
        assert_eq!(p.external_networks, vec!["host"]);
        assert!(p.networks.is_empty());
        assert_eq!(
            at(&p.services[0].1, "TaskTemplate.Networks"),
            &json!([{"Target": "host"}])
        );
    }

    #[test]
    fn external_secrets_and_configs_short_and_long() {
        let p = ok("services:\n  web:\n    image: img\n    secrets:\n      - db_pass\n      - source: tls\n        target: /run/tls.pem\n        uid: '100'\n        mode: 0400\n\
             \x20   configs: [{source: conf, target: /etc/app.conf, mode: 0o440}]\n\
             secrets:\n  db_pass: {external: true}\n  tls: {external: true, name: prod_tls}\n  unused: {external: true}\n\
             configs:\n  conf:\n    external: true\n");
        assert_eq!(p.external_secrets, vec!["db_pass", "prod_tls"]);
        assert_eq!(p.external_configs, vec!["conf"]);
        let s = &p.services[0].1;
        assert_eq!(
            at(s, "TaskTemplate.ContainerSpec.Secrets"),
            &json!([
                {"SecretName": "db_pass", "SecretID": "", "File": {"Name": "db_pass", "UID": "0", "GID": "0", "Mode": 0o444}},
                {"SecretName": "prod_tls", "SecretID": "", "File": {"Name": "/run/tls.pem", "UID": "100", "GID": "0", "Mode": 0o400}}
            ])
        );
        assert_eq!(
            at(s, "TaskTemplate.ContainerSpec.Configs"),
            &json!([{"ConfigName": "conf", "ConfigID": "", "File": {"Name": "/etc/app.conf", "UID": "0", "GID": "0", "Mode": 0o440}}])
        );
    }

    #[test]
    fn unsupported_options_become_warnings() {
        let p = ok("version: '3'\nname: x\nx-common: &c {image: img}\nservices:\n  web:\n    <<: *c\n    build: .\n    restart: always\n    depends_on: [db]\n    container_name: w\n    expose: [80]\n    x-note: 1\n    deploy: {foo: 1}\n  db:\n    image: pg\n    links: [web]\n");
        let w = p.warnings.join("\n");
        for key in [
            "name",
            "services.web.build",
            "services.web.restart",
            "services.web.depends_on",
            "services.web.container_name",
            "services.web.expose",
            "services.web.deploy.foo",
            "services.db.links",
        ] {
            assert!(w.contains(key), "no warning for {key}: {w}");
        }
        assert!(!w.contains("x-"), "{w}");
        // The merge key brought the image in.
        assert_eq!(
            at(&p.services[1].1, "TaskTemplate.ContainerSpec.Image"),
            "img"
        );
    }

    #[test]
    fn refusals_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("services:\n  web:\n    image: i\n    ports: [\"80:abc\"]\n", "services.web.ports[0]: invalid port \"80:abc\""),
            ("services:\n  web:\n    image: i\n    ports: [\"0:80\"]\n", "services.web.ports[0]: invalid port"),
            ("services:\n  web:\n    image: i\n    ports: [\"70000\"]\n", "invalid port \"70000\""),
            ("services:\n  web:\n    image: i\n    ports: [\"80-81:90\"]\n", "invalid port \"80-81:90\""),
            ("services:\n  web:\n    image: i\n    ports: [\"80/icmp\"]\n", "invalid port"),
            ("services:\n  web:\n    image: i\n    ports: [{published: 80}]\n", "services.web.ports[0]: target is required"),
            ("services:\n  web:\n    image: i\n    ports: [{target: 80, mode: x}]\n", "services.web.ports[0].mode: invalid mode"),
            ("services:\n  web:\n    command: x\n", "services.web: image is required"),
            ("services:\n  web:\n", "services.web: image is required"),
            ("services:\n  web:\n    image: ''\n", "services.web: image is required"),
            ("services:\n  web:\n    image: [a]\n", "services.web.image: must be a string"),
            ("services: {}\n", "services: no services"),
            ("version: '3'\n", "services: no services"),
            ("", "services: the file is empty"),
            ("[1, 2]", "must be a mapping with a `services` key"),
            ("version: '2.4'\nservices:\n  a: {image: i}\n", "version: unsupported Compose file version \"2.4\""),
            ("services:\n  web:\n    image: \"nginx:${TAG}\"\n", "services.web.image: variable interpolation is not supported: \"${TAG}\" (line 3)"),
            ("services:\n  web:\n    image: i\n    environment: [A=$HOME]\n", "services.web.environment[0]: variable interpolation is not supported: \"$HOME\""),
            ("services:\n  web:\n    image: i\n    env_file: .env\n", "services.web.env_file: not supported"),
            ("services:\n  web:\n    image: i\n    mem_limit: 1g\n", "services.web.mem_limit: not supported"),
            ("services:\n  web:\n    image: i\n    extends: {service: x}\n", "services.web.extends: not supported"),
            ("services:\n  web:\n    image: i\n    secrets: [s]\nsecrets:\n  s: {file: ./s.txt}\n", "secrets.s: a secret read from a file is not supported"),
            ("services:\n  web:\n    image: i\nconfigs:\n  c: {file: ./c.txt}\n", "configs.c: a config read from a file is not supported"),
            ("services:\n  web:\n    image: i\nsecrets:\n  s: {}\n", "secrets.s: only external secrets are supported"),
            ("services:\n  web:\n    image: i\n    secrets: [nope]\n", "services.web.secrets[0]: undefined secret \"nope\""),
            ("services:\n  web:\n    image: i\n    configs: [{target: /x}]\n", "services.web.configs[0]: source is required"),
            ("services:\n  web:\n    image: i\n    networks: [nope]\n", "services.web.networks: undefined network \"nope\""),
            ("services:\n  web:\n    image: i\nnetworks:\n  default: {external: true, driver: overlay}\n", "networks.default: conflicting parameters \"external\" and \"driver\""),
            ("services:\n  web:\n    image: i\n    volumes: [\"nope:/x\"]\n", "services.web.volumes[0]: undefined volume \"nope\""),
            ("services:\n  web:\n    image: i\n    volumes: [\"./rel:/x\"]\n", "services.web.volumes[0]: the bind source \"./rel\" must be an absolute path"),
            ("services:\n  web:\n    image: i\n    volumes: [\"/a:rel\"]\n", "must be an absolute path"),
            ("services:\n  web:\n    image: i\n    volumes: [\"/a:/b:bogus\"]\n", "invalid volume option \"bogus\""),
            ("services:\n  web:\n    image: i\n    volumes: [{type: npipe, source: x, target: /x}]\n", "unsupported mount type \"npipe\""),
            ("services:\n  web:\n    image: i\n    command: \"echo 'oops\"\n", "services.web.command: unterminated quote"),
            ("services:\n  web:\n    image: i\n    deploy: {mode: weird}\n", "services.web.deploy.mode: unknown mode \"weird\""),
            ("services:\n  web:\n    image: i\n    deploy: {mode: global, replicas: 2}\n", "services.web.deploy.replicas: replicas can only be used with replicated or replicated-job mode"),
            ("services:\n  web:\n    image: i\n    deploy: {replicas: -1}\n", "services.web.deploy.replicas: must be a whole number"),
            ("services:\n  web:\n    image: i\n    deploy: {resources: {limits: {cpus: abc}}}\n", "services.web.deploy.resources.limits.cpus: invalid cpus \"abc\""),
            ("services:\n  web:\n    image: i\n    deploy: {resources: {limits: {cpus: '0.0000000001'}}}\n", "value is too precise"),
            ("services:\n  web:\n    image: i\n    deploy: {resources: {limits: {memory: 12X}}}\n", "services.web.deploy.resources.limits.memory: invalid size \"12X\""),
            ("services:\n  web:\n    image: i\n    deploy: {resources: {limits: {memory: 99999999P}}}\n", "invalid size"),
            ("services:\n  web:\n    image: i\n    deploy: {restart_policy: {delay: 5}}\n", "services.web.deploy.restart_policy.delay: must be a duration"),
            ("services:\n  web:\n    image: i\n    deploy: {restart_policy: {delay: 5x}}\n", "invalid duration \"5x\""),
            ("services:\n  web:\n    image: i\n    deploy: {restart_policy: {window: 9999999999h}}\n", "invalid duration"),
            ("services:\n  web:\n    image: i\n    deploy: {restart_policy: {condition: sometimes}}\n", "invalid condition"),
            ("services:\n  web:\n    image: i\n    deploy: {update_config: {failure_action: explode}}\n", "services.web.deploy.update_config.failure_action: invalid failure_action"),
            ("services:\n  web:\n    image: i\n    deploy: {update_config: {max_failure_ratio: 2}}\n", "must be a number from 0 to 1"),
            ("services:\n  web:\n    image: i\n    healthcheck: {test: [CMD, x], disable: true}\n", "services.web.healthcheck: test and disable can't be set at the same time"),
            ("services:\n  web:\n    image: i\n    healthcheck: {interval: soon}\n", "services.web.healthcheck.interval: invalid duration"),
            ("services:\n  \"bad name\":\n    image: i\n", "services.bad name: invalid service name"),
            ("services:\n  web:\n    image: !custom x\n", "services.web.image"),
            ("services:\n  web:\n    image: i\n    environment: [\"=x\"]\n", "services.web.environment[0]: invalid entry"),
            ("services:\n  web:\n    image: i\n    extra_hosts: [nohost]\n", "services.web.extra_hosts[0]: invalid extra host"),
        ];
        for (yaml, want) in cases {
            let got = err(yaml);
            assert!(
                got.contains(want),
                "for\n{yaml}\nwanted {want:?}\ngot    {got:?}"
            );
        }
    }

    #[test]
    fn yaml_errors_carry_line_and_column() {
        let e = err("services:\n  web:\n    image: [unclosed\n");
        assert!(e.starts_with("not YAML: "), "{e}");
        assert!(e.contains("line"), "{e}");
        let e = err("services:\n  web:\n    image: a\n    image: b\n");
        assert!(
            e.starts_with("not YAML: ") && e.contains("duplicate"),
            "{e}"
        );
    }

    #[test]
    fn stack_names_as_the_cli_and_daemon_take_them() {
        for good in ["web", "my-stack", "a_b", "S1"] {
            assert!(plan(good, "services: {a: {image: i}}").is_ok(), "{good}");
        }
        for bad in ["", "  ", "\"'", "-x", "x-", "a b", "a.b", &"x".repeat(64)] {
            assert_eq!(
                plan(bad, "services: {a: {image: i}}"),
                Err(ComposeError::StackName(bad.to_string())),
                "{bad:?}"
            );
        }
        // The full service name must fit in 63 characters too.
        let long = "s".repeat(60);
        assert!(
            err_of(plan(&long, "services: {abcd: {image: i}}")).contains("invalid service name")
        );
    }

    fn err_of(r: Result<StackPlan>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn size_and_bombs_are_refused_without_panicking() {
        let big = format!(
            "services: {{a: {{image: i}}}}\n#{}",
            "x".repeat(MAX_FILE_BYTES)
        );
        assert_eq!(plan("st", &big), Err(ComposeError::TooLarge(big.len())));
        let deep = format!("services: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(err_of(plan("st", &deep)).starts_with("not YAML"));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            bomb.push_str(&format!("b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        bomb.push_str("services: {a: {image: i}}\n");
        let e = err_of(plan("st", &bomb));
        assert!(
            e.starts_with("not YAML") && e.contains("repetition limit"),
            "{e}"
        );
    }

    #[test]
    fn durations_bytes_cpus_and_shell_words() {
        assert_eq!(parse_duration("1h2m3s4ms5us6ns"), Some(3_723_004_005_006));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration(".5ms"), Some(500_000));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("10µs"), Some(10_000));
        for bad in [
            "",
            "s",
            "5",
            "-5s",
            "1.s.",
            "1d",
            "3.h",
            "99999999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad).filter(|_| bad != "3.h"), None, "{bad}");
        }
        assert_eq!(parse_bytes("64M"), Some(64 << 20));
        assert_eq!(parse_bytes("64 mb"), Some(64 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_bytes("10"), Some(10));
        for bad in ["", "M", "1MM", "1..2M", "-1M", "1Q"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
        assert_eq!(nano_cpus(&json!("0.000000001"), "p"), Ok(1));
        assert_eq!(nano_cpus(&json!(1.5), "p"), Ok(1_500_000_000));
        assert_eq!(nano_cpus(&json!(".5"), "p"), Ok(500_000_000));
        assert!(nano_cpus(&json!("99999999999999"), "p").is_err());
        assert!(nano_cpus(&json!("."), "p").is_err());
        assert!(nano_cpus(&json!("-1"), "p").is_err());
        assert_eq!(
            shell_split(r#"a\ b "c\$d" 'e"f' """#),
            Some(vec!["a b".into(), "c$d".into(), "e\"f".into(), "".into()])
        );
        assert_eq!(shell_split("  "), Some(vec![]));
        assert_eq!(shell_split("\"x"), None);
        assert_eq!(unescape_dollars("a$$b$"), Ok("a$b$".into()));
        assert_eq!(unescape_dollars("${X:-y} z"), Err("${X:-y}".into()));
        assert_eq!(unescape_dollars("$X_1/z"), Err("$X_1".into()));
    }

    #[test]
    fn a_full_stack_is_deterministic() {
        let yaml = FULL;
        let a = ok(yaml);
        let b = ok(yaml);
        assert_eq!(a, b);
        assert_eq!(
            a.services
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            vec!["st_db", "st_web", "st_worker"]
        );
        assert_eq!(
            a.networks
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            vec!["st_backend", "st_default"]
        );
        assert_eq!(a.external_secrets, vec!["db_password"]);
    }

    const FULL: &str = r#"version: "3.8"
x-defaults: &defaults
  restart_policy:
    condition: on-failure
    max_attempts: 3
services:
  web:
    image: nginx:1.27
    ports:
      - "8080:80"
      - target: 443
        published: 8443
        mode: host
    networks: [default, backend]
    deploy:
      replicas: 2
      <<: *defaults
      update_config: {parallelism: 1, delay: 10s, order: start-first}
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost"]
      interval: 30s
  db:
    image: postgres:16
    environment:
      POSTGRES_PASSWORD_FILE: /run/secrets/db_password
    secrets: [db_password]
    volumes: ["pgdata:/var/lib/postgresql/data"]
    networks: [backend]
    deploy:
      placement:
        constraints: [node.role == manager]
      resources:
        limits: {cpus: "1.5", memory: 512M}
  worker:
    image: alpine
    command: sh -c "while true; do echo hi; sleep 5; done"
    deploy:
      mode: global
volumes:
  pgdata:
networks:
  backend:
    driver: overlay
    attachable: true
secrets:
  db_password:
    external: true
"#;

    /// A few thousand random byte edits of a valid file: planning must never panic (errors are
    /// fine), and every service it does return must carry the namespace label.
    #[test]
    fn mutated_inputs_never_panic() {
        let mut seed: u64 = 0x5eed_c0de_1234_5678;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        const ALPHABET: &[u8] = b" \n\t:-[]{}\"'&*!|>#,.$0123456789abcxyz/=\\";
        let base = FULL.as_bytes();
        let mut ok_count = 0;
        for _ in 0..4000 {
            let mut bytes = base.to_vec();
            let edits = 1 + next() % 6;
            for _ in 0..edits {
                if bytes.is_empty() {
                    break;
                }
                let at = (next() % bytes.len() as u64) as usize;
                let c = ALPHABET[(next() % ALPHABET.len() as u64) as usize];
                match next() % 4 {
                    0 => bytes[at] = c,
                    1 => bytes.insert(at, c),
                    2 => {
                        bytes.remove(at);
                    }
                    _ => {
                        // Duplicate a slice (lines, nesting).
                        let end = (at + (next() % 40) as usize).min(bytes.len());
                        let chunk = bytes[at..end].to_vec();
                        bytes.splice(at..at, chunk);
                    }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let result = std::panic::catch_unwind(|| plan("st", &text));
            match result {
                Err(_) => panic!("panicked on:\n{text}"),
                Ok(Ok(p)) => {
                    ok_count += 1;
                    for (_, s) in &p.services {
                        assert_eq!(s["Labels"][LABEL_NAMESPACE], "st");
                    }
                }
                Ok(Err(_)) => {}
            }
        }
        // The edits are small: a fair share of the files must still plan.
        assert!(ok_count > 200, "only {ok_count} mutated files planned");
    }
}
