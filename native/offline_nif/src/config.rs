//! Decodes the config map `start/1`, `validate/1` and `reconfigure/2` take into the core's
//! `StoreConfig` plus the NIF's own keys. All config term decoding lives here.

use std::collections::HashMap;

use offline_store::{StoreConfig, StoreError};
use rustler::Term;

/// Keys `start/1` takes besides the core's own (`offline_store::config::CONFIG_KEYS`).
const WORKER_THREADS_KEY: &str = "worker_threads";

/// Turns the config map (binary keys; binary, integer or boolean values) into strings.
fn config_strings(map: HashMap<String, Term>) -> Result<HashMap<String, String>, StoreError> {
    map.into_iter()
        .map(|(key, value)| {
            let text = if let Ok(s) = value.decode::<String>() {
                s
            } else if let Ok(i) = value.decode::<i64>() {
                i.to_string()
            } else if let Ok(b) = value.decode::<bool>() {
                b.to_string()
            } else {
                return Err(StoreError::InvalidConfig {
                    field: key,
                    reason: "must be a string, integer or boolean".into(),
                });
            };
            Ok((key, text))
        })
        .collect()
}

/// The core's config plus `worker_threads` (default 2).
pub fn parse_config(config: HashMap<String, Term>) -> Result<(StoreConfig, usize), StoreError> {
    let mut strings = config_strings(config)?;
    let workers = match strings.remove(WORKER_THREADS_KEY) {
        None => 2,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                return Err(StoreError::InvalidConfig {
                    field: WORKER_THREADS_KEY.into(),
                    reason: format!("{v:?} is not a whole number between 1 and 64"),
                });
            }
        },
    };
    Ok((StoreConfig::from_map(&strings)?, workers))
}
