//! The catalog: views created over the HTTP API, kept in `<data-dir>/catalog.json` so
//! that they survive restarts. Written atomically (temporary file, fsync, rename).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A view as the catalog stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewDefinition {
    /// The `CREATE VIEW` statement.
    pub sql: String,
    /// Allowed lateness override, e.g. `"5m"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness: Option<String>,
    /// Retention override, e.g. `"1h"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct CatalogFile {
    views: Vec<(String, ViewDefinition)>,
}

/// The persisted list of views created at run time.
pub struct Catalog {
    path: PathBuf,
    views: Vec<(String, ViewDefinition)>,
}

impl Catalog {
    /// Loads the catalog from the data directory (empty if there is none yet).
    pub fn load(data_dir: &Path) -> Result<Catalog> {
        let path = data_dir.join("catalog.json");
        let views = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<CatalogFile>(&bytes)
                .map_err(|e| Error::Config(format!("{} is damaged: {e}", path.display())))?
                .views,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        Ok(Catalog { path, views })
    }

    /// The stored views, in creation order.
    pub fn views(&self) -> &[(String, ViewDefinition)] {
        &self.views
    }

    /// Adds a view and saves.
    pub fn add(&mut self, name: &str, def: ViewDefinition) -> Result<()> {
        self.views.push((name.to_string(), def));
        self.save()
    }

    /// Removes a view and saves; says whether it was there.
    pub fn remove(&mut self, name: &str) -> Result<bool> {
        let before = self.views.len();
        self.views.retain(|(n, _)| n != name);
        if self.views.len() == before {
            return Ok(false);
        }
        self.save()?;
        Ok(true)
    }

    fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&CatalogFile { views: self.views.clone() }).expect("the catalog serializes");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| Error::io(format!("saving {}", self.path.display()), e))
    }
}
