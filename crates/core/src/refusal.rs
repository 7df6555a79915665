//! A refusal: a reason code plus bounded diagnostics. Every failure path of the engine ends in
//! one, and [`Refusal::into_bundle`] is the only way it reaches the wire.

use crate::diagnostics::{self, Diagnostic, Problem, Subject};
use crate::reason::ReasonCode;
use crate::wire::{MaterialBundle, Operation};

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The reason code.
    pub reason: ReasonCode,
    /// Diagnostics from the fixed vocabulary.
    pub diagnostics: Vec<Diagnostic>,
}

impl Refusal {
    /// A refusal with one diagnostic.
    pub fn new(reason: ReasonCode, subject: Subject, problem: Problem) -> Self {
        Self {
            reason,
            diagnostics: vec![Diagnostic::new(subject, problem)],
        }
    }

    /// A refusal with no diagnostic.
    pub fn bare(reason: ReasonCode) -> Self {
        Self {
            reason,
            diagnostics: Vec::new(),
        }
    }

    /// The refusal bundle, with at most `max_diagnostics` diagnostics.
    pub fn into_bundle(
        self,
        operation: Option<Operation>,
        dry_run: bool,
        max_diagnostics: usize,
    ) -> MaterialBundle {
        MaterialBundle::refusal(
            self.reason,
            diagnostics::bound(self.diagnostics, max_diagnostics),
            operation,
            dry_run,
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason.name())?;
        for d in &self.diagnostics {
            write!(f, " {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}
