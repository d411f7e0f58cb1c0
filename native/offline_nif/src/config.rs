//! Decodes the config map `start/1`, `validate/1` and `reconfigure/2` take into the core's
//! `StoreConfig` plus the NIF's own keys, and answers the plugin's two config questions
//! (`nif_config_problem/1`, `nif_default_config/0`). All config term decoding lives here.
//!
//! Values arrive typed (the plugin converted its form's text): integers (durations in
//! milliseconds, sizes in bytes), `true`/`false`, and UTF-8 binaries. Nothing here parses
//! text, and nothing here checks a rule: the core does, once.

use std::collections::HashMap;

use offline_store::config::ConfigValue;
use offline_store::{StoreConfig, StoreError};
use rustler::{Encoder, Env, Term};

use crate::atoms;

/// Keys `start/1` takes besides the core's own (`offline_store::config::CONFIG_KEYS`).
const WORKER_THREADS_KEY: &str = "worker_threads";

fn invalid(field: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidConfig {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// One term as the core's typed value.
fn config_value(key: &str, term: Term) -> Result<ConfigValue, StoreError> {
    if let Ok(b) = term.decode::<bool>() {
        Ok(ConfigValue::Bool(b))
    } else if let Ok(i) = term.decode::<i64>() {
        Ok(ConfigValue::Int(i))
    } else if term.is_binary() {
        term.decode::<String>()
            .map(ConfigValue::Text)
            .map_err(|_| invalid(key, "must be UTF-8 text"))
    } else {
        Err(invalid(
            key,
            "must be a binary, a whole number, true or false",
        ))
    }
}

/// The core's config plus `worker_threads` (default 2).
pub fn parse_config(config: HashMap<String, Term>) -> Result<(StoreConfig, usize), StoreError> {
    let mut values = config
        .into_iter()
        .map(|(key, term)| config_value(&key, term).map(|v| (key, v)))
        .collect::<Result<HashMap<String, ConfigValue>, StoreError>>()?;
    let workers = match values.remove(WORKER_THREADS_KEY) {
        None => 2,
        Some(ConfigValue::Int(n)) if (1..=64).contains(&n) => n as usize,
        Some(other) => {
            return Err(invalid(
                WORKER_THREADS_KEY,
                format!("{other:?} is not a whole number between 1 and 64"),
            ));
        }
    };
    Ok((StoreConfig::from_map(&values)?, workers))
}

/// The core's verdict on a config, for the plugin to show under its form's names:
/// `ok | {Key, Reason}` (binaries). Builds nothing and opens nothing, so it returns
/// within microseconds.
#[rustler::nif(name = "nif_config_problem")]
fn config_problem<'a>(env: Env<'a>, config: HashMap<String, Term<'a>>) -> Term<'a> {
    match parse_config(config) {
        Ok(_) => atoms::ok().encode(env),
        Err(StoreError::InvalidConfig { field, reason }) => (field, reason).encode(env),
        Err(other) => (other.kind(), other.to_string()).encode(env),
    }
}

/// Every core key with its default, typed as `start/1` takes it (credentials left out):
/// the plugin's tests check that its shipped defaults are these.
#[rustler::nif(name = "nif_default_config")]
fn default_config(env: Env) -> Term {
    let pairs: Vec<(Term, Term)> = StoreConfig::default()
        .to_values()
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                ConfigValue::Int(i) => i.encode(env),
                ConfigValue::Bool(b) => b.encode(env),
                ConfigValue::Text(t) => t.encode(env),
            };
            (key.encode(env), value)
        })
        .collect();
    Term::map_from_pairs(env, &pairs).unwrap_or_else(|_| atoms::error().encode(env))
}
