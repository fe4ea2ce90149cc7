//! Sync: one proxier per IP family behind a thin dispatcher. The proxier turns a Service's
//! ports into its family's frontends (the plan) and hands them to its map writer; nothing in
//! here asks which family it is.
use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::{
    family::{Address, Family},
    maps::{
        LbMaps,
        writer::{WriteError, Writer, WriterStats},
    },
    model::{ServiceName, ServicePort},
    plan::{self, Frontend, Planned},
};

pub type BoxedMaps<A> = Box<dyn LbMaps<A> + Send>;

/// A failure to program one frontend of one Service.
#[derive(Debug)]
pub struct SyncError {
    pub service: Option<ServiceName>,
    pub family: Family,
    pub frontend: Option<String>,
    pub error: WriteError,
}

pub struct Proxier<A> {
    writer: Writer<A, BoxedMaps<A>>,
    /// The frontends (and entries) each Service owns in this family.
    owned: HashMap<ServiceName, Vec<Planned<A>>>,
    /// Which Service a frontend belongs to (the last one to claim it), so a Service that
    /// goes away never removes a frontend another Service has taken over.
    owners: HashMap<Frontend<A>, ServiceName>,
}

impl<A: Address> Proxier<A> {
    pub fn new(maps: BoxedMaps<A>) -> Result<Self, WriteError> {
        Ok(Self {
            writer: Writer::restore(maps)?,
            owned: HashMap::new(),
            owners: HashMap::new(),
        })
    }

    /// Programs one Service's ports (empty: the Service is gone or skipped).
    pub fn apply(
        &mut self,
        service: &ServiceName,
        ports: &[ServicePort],
        errors: &mut Vec<SyncError>,
    ) {
        self.apply_all(&[(service.clone(), ports.to_vec())], errors);
    }

    /// Programs many Services at once: every desired frontend is written (new ones in
    /// batches), then the frontends they no longer have are removed, unless another Service
    /// has claimed them in the meantime.
    pub fn apply_all(
        &mut self,
        changes: &[(ServiceName, Vec<ServicePort>)],
        errors: &mut Vec<SyncError>,
    ) {
        let mut upserts = Vec::new();
        let mut owner_of = HashMap::new();
        let mut removals = Vec::new();
        for (service, ports) in changes {
            let desired: Vec<_> = ports.iter().flat_map(plan::frontends::<A>).collect();
            let old = self.owned.remove(service).unwrap_or_default();
            let keep: HashSet<_> = desired.iter().map(|(f, _)| *f).collect();
            removals.extend(
                old.into_iter()
                    .filter(|(f, _)| !keep.contains(f))
                    .map(|(f, _)| (f, service.clone())),
            );
            for (frontend, _) in &desired {
                self.owners.insert(*frontend, service.clone());
                owner_of.insert(*frontend, service.clone());
            }
            upserts.extend(desired.iter().cloned());
            if !desired.is_empty() {
                self.owned.insert(service.clone(), desired);
            }
        }
        // Two Services claiming one frontend (a conflict in the cluster): the last one wins.
        let mut seen = HashSet::new();
        upserts.reverse();
        upserts.retain(|(f, _)| seen.insert(*f));
        upserts.reverse();
        for (frontend, error) in self.writer.upsert_many(&upserts) {
            errors.push(SyncError {
                service: owner_of.get(&frontend).cloned(),
                family: A::FAMILY,
                frontend: Some(frontend.to_string()),
                error,
            });
        }
        for (frontend, service) in removals {
            if self.owners.get(&frontend) != Some(&service) {
                continue; // Another Service claims it now.
            }
            self.owners.remove(&frontend);
            if let Err(error) = self.writer.remove(&frontend) {
                errors.push(SyncError {
                    service: Some(service),
                    family: A::FAMILY,
                    frontend: Some(frontend.to_string()),
                    error,
                });
            }
        }
    }

    /// Makes the maps hold exactly what the Services own: removes whatever else is there
    /// (left by an earlier agent, or drift).
    pub fn reconcile(&mut self, errors: &mut Vec<SyncError>) {
        let desired = self.owned.values().flatten().map(|(f, e)| (f, e));
        for (frontend, error) in self.writer.reconcile(desired) {
            errors.push(SyncError {
                service: None,
                family: A::FAMILY,
                frontend: frontend.map(|f| f.to_string()),
                error,
            });
        }
    }

    /// Re-reads the kernel maps and writes whatever differs from what the Services own:
    /// the periodic repair of drift.
    pub fn repair(&mut self, errors: &mut Vec<SyncError>) {
        if let Err(error) = self.writer.refresh() {
            errors.push(SyncError {
                service: None,
                family: A::FAMILY,
                frontend: None,
                error,
            });
            return;
        }
        self.reconcile(errors);
    }

    pub fn stats(&self) -> WriterStats {
        self.writer.stats()
    }

    pub fn frontend_count(&self) -> usize {
        self.writer.frontend_count()
    }

    pub fn figures(&self) -> crate::metrics::FamilyFigures {
        crate::metrics::FamilyFigures {
            writes: self.writer.stats(),
            frontends: self.writer.frontend_count(),
            backends: self.writer.backend_count(),
        }
    }
}

/// The dispatcher: hands every change to the proxier of each family this node serves.
pub struct Dataplane {
    pub v4: Option<Proxier<Ipv4Addr>>,
    pub v6: Option<Proxier<Ipv6Addr>>,
}

impl Dataplane {
    pub fn apply(&mut self, service: &ServiceName, ports: &[ServicePort]) -> Vec<SyncError> {
        self.apply_all(&[(service.clone(), ports.to_vec())])
    }

    pub fn apply_all(&mut self, changes: &[(ServiceName, Vec<ServicePort>)]) -> Vec<SyncError> {
        let mut errors = Vec::new();
        if let Some(p) = &mut self.v4 {
            p.apply_all(changes, &mut errors);
        }
        if let Some(p) = &mut self.v6 {
            p.apply_all(changes, &mut errors);
        }
        errors
    }

    pub fn reconcile(&mut self) -> Vec<SyncError> {
        let mut errors = Vec::new();
        if let Some(p) = &mut self.v4 {
            p.reconcile(&mut errors);
        }
        if let Some(p) = &mut self.v6 {
            p.reconcile(&mut errors);
        }
        errors
    }

    pub fn repair(&mut self) -> Vec<SyncError> {
        let mut errors = Vec::new();
        if let Some(p) = &mut self.v4 {
            p.repair(&mut errors);
        }
        if let Some(p) = &mut self.v6 {
            p.repair(&mut errors);
        }
        errors
    }

    pub fn figures(&self) -> Vec<(Family, crate::metrics::FamilyFigures)> {
        let mut figures = Vec::new();
        if let Some(p) = &self.v4 {
            figures.push((Family::V4, p.figures()));
        }
        if let Some(p) = &self.v6 {
            figures.push((Family::V6, p.figures()));
        }
        figures
    }

    pub fn families(&self) -> Vec<Family> {
        let mut families = Vec::new();
        if self.v4.is_some() {
            families.push(Family::V4);
        }
        if self.v6.is_some() {
            families.push(Family::V6);
        }
        families
    }
}
