//! The catalog of applications: their specs, live in memory and durable in the store, and the
//! checks made when one is registered or changed. Each application keeps its own random
//! generator (seeded from its spec) across changes. With a shared store, what another server
//! changed is read again from the store ([`Catalog::refresh`], [`Catalog::reload`]).

use super::SelectionError;
use super::app::{ApplicationSpec, split_link};
use crate::registry::Registry;
use crate::store::{Store, StoreError};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A registered application.
pub(super) struct App {
    /// What it is.
    pub(super) spec: ApplicationSpec,
    /// The policy's random draws.
    pub(super) rng: Arc<Mutex<StdRng>>,
}

impl App {
    fn new(spec: ApplicationSpec) -> App {
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(spec.seed)));
        App { spec, rng }
    }
}

/// Every application of a server.
pub(super) struct Catalog {
    store: Store,
    apps: RwLock<BTreeMap<String, Arc<App>>>,
}

impl Catalog {
    /// The applications kept in `store`.
    pub(super) async fn open(store: Store) -> Result<Catalog, StoreError> {
        let catalog = Catalog {
            store,
            apps: RwLock::new(BTreeMap::new()),
        };
        catalog.reload().await?;
        Ok(catalog)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<App>>> {
        self.apps.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `spec` live, keeping the random generator of the application it replaces.
    fn make_live(&self, spec: ApplicationSpec) {
        let mut apps = self.write();
        let app = match apps.get(&spec.name) {
            Some(current) => App {
                spec,
                rng: current.rng.clone(),
            },
            None => App::new(spec),
        };
        apps.insert(app.spec.name.clone(), Arc::new(app));
    }

    /// Reads every application from the store again.
    pub(super) async fn reload(&self) -> Result<(), StoreError> {
        let specs = self.store.applications::<ApplicationSpec>().await?;
        let names: std::collections::BTreeSet<String> =
            specs.iter().map(|spec| spec.name.clone()).collect();
        self.write().retain(|name, _| names.contains(name));
        for spec in specs {
            self.make_live(spec);
        }
        Ok(())
    }

    /// Reads the application `name` from the store again; returns whether it exists.
    pub(super) async fn refresh(&self, name: &str) -> Result<bool, StoreError> {
        match self.store.application::<ApplicationSpec>(name).await? {
            Some(spec) => {
                self.make_live(spec);
                Ok(true)
            }
            None => {
                self.write().remove(name);
                Ok(false)
            }
        }
    }

    /// The application `name`.
    pub(super) fn app(&self, name: &str) -> Result<Arc<App>, SelectionError> {
        self.apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| SelectionError::AppNotFound(name.to_string()))
    }

    /// Every application's spec, by name.
    pub(super) fn list(&self) -> Vec<ApplicationSpec> {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        apps.values().map(|app| app.spec.clone()).collect()
    }

    /// Registers an application. Its linked models must be loaded and have its output.
    pub(super) async fn register(
        &self,
        registry: &Registry,
        spec: ApplicationSpec,
    ) -> Result<(), SelectionError> {
        spec.validate().map_err(SelectionError::InvalidArgument)?;
        if self.app(&spec.name).is_ok() {
            return Err(SelectionError::AppExists(spec.name));
        }
        check_links(registry, &spec)?;
        self.commit(spec).await
    }

    /// Links a model (`name` or `name@version`) to an application.
    pub(super) async fn link(
        &self,
        registry: &Registry,
        app: &str,
        model: &str,
    ) -> Result<ApplicationSpec, SelectionError> {
        let current = self.app(app)?;
        if current.spec.models.iter().any(|m| m == model) {
            return Err(SelectionError::AlreadyLinked {
                app: app.to_string(),
                model: model.to_string(),
            });
        }
        let mut spec = current.spec.clone();
        spec.models.push(model.to_string());
        spec.validate().map_err(SelectionError::InvalidArgument)?;
        check_links(
            registry,
            &ApplicationSpec {
                models: vec![model.to_string()],
                ..spec.clone()
            },
        )?;
        self.commit(spec.clone()).await?;
        Ok(spec)
    }

    /// Unlinks a model from an application.
    pub(super) async fn unlink(
        &self,
        app: &str,
        model: &str,
    ) -> Result<ApplicationSpec, SelectionError> {
        let current = self.app(app)?;
        let mut spec = current.spec.clone();
        let before = spec.models.len();
        spec.models.retain(|m| m != model);
        if spec.models.len() == before {
            return Err(SelectionError::NotLinked {
                app: app.to_string(),
                model: model.to_string(),
                linked: current.spec.models.clone(),
            });
        }
        spec.validate().map_err(SelectionError::InvalidArgument)?;
        self.commit(spec.clone()).await?;
        Ok(spec)
    }

    /// Deletes an application and all its stored selection state.
    pub(super) async fn delete(&self, app: &str) -> Result<(), SelectionError> {
        self.app(app)?;
        self.store.delete_application(app).await?;
        self.write().remove(app);
        Ok(())
    }

    /// Stores a changed spec durably, then makes it live.
    async fn commit(&self, spec: ApplicationSpec) -> Result<(), SelectionError> {
        self.store.put_application(&spec.name, &spec).await?;
        self.make_live(spec);
        Ok(())
    }
}

/// Checks that every model `spec` links is loaded and has the application's output.
fn check_links(registry: &Registry, spec: &ApplicationSpec) -> Result<(), SelectionError> {
    for link in &spec.models {
        let (name, version) = split_link(link);
        let model = registry.get(name, version)?;
        spec.check_model(&model.info)
            .map_err(|e| SelectionError::InvalidArgument(format!("models: {e}")))?;
    }
    Ok(())
}
