//! Steps for one owner, collected before they are known to be conflict-free.

use super::index::Index;
use super::plan::{Action, Conflict, Object, Plan, PlannedLink, Step};
use crate::model::{Address, Attachment, Link, Netns, Route};

pub(super) struct Draft<'a> {
    netns: Netns,
    attachment: Option<&'a Attachment>,
    pub steps: Vec<Step>,
    pub conflicts: Vec<Conflict>,
}

impl<'a> Draft<'a> {
    pub fn new(netns: Netns, attachment: Option<&'a Attachment>) -> Self {
        Draft {
            netns,
            attachment,
            steps: Vec::new(),
            conflicts: Vec::new(),
        }
    }

    pub fn step(
        &mut self,
        action: Action,
        object: Object,
        before: Option<Object>,
        reason: impl Into<String>,
    ) {
        self.steps.push(Step {
            action,
            netns: self.netns.clone(),
            object,
            before,
            attachment: self.attachment.cloned(),
            reason: reason.into(),
        });
    }

    pub fn conflict(&mut self, desired: Object, found: Object, reason: impl Into<String>) {
        self.conflicts.push(Conflict {
            netns: self.netns.clone(),
            attachment: self.attachment.cloned(),
            desired,
            found,
            reason: reason.into(),
        });
    }

    /// Compares one desired route with the namespace's routes. `fresh`: its
    /// device is being (re)created, so an owned route on it now will be gone.
    pub fn route(&mut self, want: &Route, index: &Index, fresh: bool) {
        let owned = index
            .owned_routes
            .get(&want.key())
            .filter(|have| !(fresh && have.dev == want.dev));
        match owned {
            Some(have) if want.satisfied_by(have) => {}
            Some(have) => self.step(
                Action::Change,
                Object::Route(want.clone()),
                Some(Object::Route((*have).clone())),
                "differs",
            ),
            None => match index.foreign_routes.get(&(want.table, want.dst)) {
                Some(foreign) => self.conflict(
                    Object::Route(want.clone()),
                    Object::Route((*foreign).clone()),
                    "a route to the same destination with another protocol is in the way",
                ),
                None => self.step(Action::Add, Object::Route(want.clone()), None, "missing"),
            },
        }
    }

    pub fn address(&mut self, want: &Address, index: &Index, fresh: bool) {
        if fresh || !index.addresses.contains(&(want.dev.as_str(), want.addr)) {
            self.step(Action::Add, Object::Address(want.clone()), None, "missing");
        }
    }

    /// A link's MTU and state, when they differ.
    pub fn link_state(&mut self, want: &Link, have: &Link) {
        if want.mtu != have.mtu || want.up != have.up {
            self.step(
                Action::Change,
                Object::Link(PlannedLink::state(want.clone())),
                Some(Object::Link(PlannedLink::state(have.clone()))),
                "differs",
            );
        }
    }

    /// Moves the other draft's steps and conflicts into this one.
    pub fn absorb(&mut self, mut other: Draft) {
        self.steps.append(&mut other.steps);
        self.conflicts.append(&mut other.conflicts);
    }

    /// Its steps into `plan`, or, if anything is in the way, its conflicts instead.
    pub fn add_to(self, plan: &mut Plan) {
        if self.conflicts.is_empty() {
            plan.steps.extend(self.steps);
        } else {
            plan.conflicts.extend(self.conflicts);
        }
    }
}
