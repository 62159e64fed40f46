//! Fuzz target: reading a YAML config never panics, and an accepted config passes its own checks again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgbouncers_worker::config::{restart_required_changes, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml_str(yaml) {
        Ok(config) => {
            assert!(config.validate().is_ok());
            assert_eq!(config.clone(), config);
            assert!(restart_required_changes(&config, &config).is_empty());
            assert!(config.worker_count() >= 1);
            for db in ["app", "pgbouncers", "*", ""] {
                let _ = config.database(db);
                let _ = config.pool_mode_for(db, "app");
                let _ = config.pool_size_for(db, "app");
                let _ = config.max_db_connections_for(db);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
