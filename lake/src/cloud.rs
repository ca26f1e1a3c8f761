//! Object storage beyond the local disk: `s3://`, `gs://` and `az://` locations.
//!
//! Delta Lake's own cloud integrations bring whole vendor SDKs; the `object_store`
//! crate that DataFusion and Delta already share speaks all three protocols itself.
//! This registers its stores with Delta for those schemes, configured the usual way:
//! the vendors' environment variables (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`,
//! `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …), overridden by the
//! options given in Weir's configuration (`[snapshot.storage]`, the same keys in lower
//! case).
//!
//! Commits use the default log store: a commit is a put-if-absent of the next log
//! file, which S3 (and compatible servers) honour with `If-None-Match: *`. Weir is the
//! only writer of its tables.

use std::sync::{Arc, Once};
use std::time::Duration;

use deltalake::logstore::object_store::{self, ObjectStore, RetryConfig};
use deltalake::logstore::{LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore, logstore_factories, object_store_factories};
use deltalake::{DeltaResult, DeltaTableError};
use url::Url;

/// The schemes served by [`register`].
pub const SCHEMES: [&str; 7] = ["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

/// Makes Delta open `s3://`, `gs://` and `az://` (`abfss://`) tables. Idempotent.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in SCHEMES {
            let url = Url::parse(&format!("{scheme}://")).expect("a scheme is a URL");
            object_store_factories().insert(url.clone(), Arc::new(CloudStores));
            logstore_factories().insert(url, Arc::new(CloudLogs));
        }
    });
}

/// How long one request to the store is retried before the operation fails. A
/// snapshot that fails is retried whole at the next interval, so this stays short.
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);

struct CloudStores;

/// A store that cannot be built (a bad option, say) is an error of its own, never
/// taken for "no table there".
fn invalid(url: &Url, e: impl std::fmt::Display) -> DeltaTableError {
    DeltaTableError::Generic(format!("object store for {url}: {e}"))
}

impl ObjectStoreFactory for CloudStores {
    fn parse_url_opts(&self, url: &Url, config: &StorageConfig) -> DeltaResult<(ObjectStoreRef, object_store::path::Path)> {
        let retry = RetryConfig { retry_timeout: RETRY_TIMEOUT, max_retries: 5, ..RetryConfig::default() };
        // options are matched case-insensitively, as the environment variables they override
        let options = config.raw.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone()));
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str()).with_retry(retry);
                for (key, value) in options {
                    let key = key.parse().map_err(|e| invalid(url, e))?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(|e| invalid(url, e))?)
            }
            "gs" => {
                let mut builder = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str()).with_retry(retry);
                for (key, value) in options {
                    let key = key.parse().map_err(|e| invalid(url, e))?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(|e| invalid(url, e))?)
            }
            _ => {
                let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str()).with_retry(retry);
                for (key, value) in options {
                    let key = key.parse().map_err(|e| invalid(url, e))?;
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(|e| invalid(url, e))?)
            }
        };
        let path = object_store::path::Path::from_url_path(url.path()).map_err(|e| invalid(url, e))?;
        Ok((store, path))
    }
}

struct CloudLogs;

impl LogStoreFactory for CloudLogs {
    fn with_options(&self, prefixed_store: ObjectStoreRef, root_store: ObjectStoreRef, location: &Url, options: &StorageConfig) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed_store, root_store, location, options))
    }
}
