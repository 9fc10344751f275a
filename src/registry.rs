//! Named long-lived resources: the state that outlives a reload. Connection pools, round-robin
//! positions, retry budgets, each target's health and load; next, the shared store, JWKS
//! caches and response caches. Each is an `Arc<T>` under a name (`upstream`, or
//! `upstream/target`), one map per type.
//!
//! Compiling only reads the registry: [`Claims::claim`] takes the live resource when the new
//! config can keep it (`reuse` says whether its settings still fit) or makes a new one, and
//! records the choice in the compiled runtime. Only when that runtime goes live does
//! [`Registry::adopt`] make the registry exactly its claims: what is still used is kept, what is
//! gone is dropped, and a refused config leaves nothing behind.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Key = (TypeId, Arc<str>);
type Resource = Arc<dyn Any + Send + Sync>;

#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<Key, Resource>>,
}

impl Registry {
    /// The live `T` named `name`, if the running config has one.
    pub fn get<T: Any + Send + Sync>(&self, name: &str) -> Option<Arc<T>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(&(TypeId::of::<T>(), Arc::from(name)))
            .and_then(|r| r.clone().downcast().ok())
    }

    /// Makes the registry hold exactly what a config that is going live claimed.
    pub fn adopt(&self, claims: &Claims) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        *live = claims.items.clone();
    }

    /// How many resources are live (for tests and the admin API).
    pub fn len(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The resources one compiled config uses, by type and name.
#[derive(Default)]
pub struct Claims {
    items: HashMap<Key, Resource>,
}

impl Claims {
    /// The `T` named `name` for this config: one already claimed by it, else the live one if
    /// `reuse` accepts it, else a new one from `make`.
    pub fn claim<T: Any + Send + Sync>(
        &mut self,
        registry: &Registry,
        name: &str,
        reuse: impl FnOnce(&T) -> bool,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let key = (TypeId::of::<T>(), Arc::from(name));
        if let Some(r) = self.items.get(&key).and_then(|r| r.clone().downcast().ok()) {
            return r;
        }
        let r = match registry.get::<T>(name) {
            Some(live) if reuse(&live) => live,
            _ => Arc::new(make()),
        };
        self.items.insert(key, r.clone());
        r
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes in what another part of the same compile claimed (the policies').
    pub fn absorb(&mut self, other: Claims) {
        for (k, v) in other.items {
            self.items.entry(k).or_insert(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_reads_adopt_reconciles() {
        let reg = Registry::default();
        let mut first = Claims::default();
        let a = first.claim(&reg, "a", |_: &u32| true, || 1u32);
        first.claim(&reg, "gone", |_: &u32| true, || 2u32);
        assert!(reg.is_empty(), "claiming changes nothing live");
        reg.adopt(&first);
        assert_eq!(reg.len(), 2);

        // A second config keeps `a` (its settings fit), remakes nothing else, drops `gone`.
        let mut second = Claims::default();
        let a2 = second.claim(&reg, "a", |v: &u32| *v == 1, || 9u32);
        assert!(Arc::ptr_eq(&a, &a2));
        let again = second.claim(&reg, "a", |_: &u32| false, || 9u32);
        assert!(Arc::ptr_eq(&a, &again), "one config claims a name once");
        // Same name, another type: another resource.
        second.claim(&reg, "a", |_: &String| true, || "x".to_owned());
        // A refused config: never adopted, the registry is untouched.
        let mut refused = Claims::default();
        refused.claim(&reg, "new", |_: &u32| true, || 3u32);
        assert_eq!(reg.len(), 2);
        reg.adopt(&second);
        assert_eq!(reg.len(), 2);
        assert!(reg.get::<u32>("gone").is_none());
        assert_eq!(
            reg.get::<String>("a").as_deref().map(String::as_str),
            Some("x")
        );

        // Settings changed: a new one.
        let mut third = Claims::default();
        let a3 = third.claim(&reg, "a", |v: &u32| *v == 5, || 5u32);
        assert!(!Arc::ptr_eq(&a, &a3));
    }
}
