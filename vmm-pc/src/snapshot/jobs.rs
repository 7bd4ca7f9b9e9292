//! QEMU's jobs, as far as snapshots need them: `snapshot-save` and
//! `snapshot-load` are jobs with an id that go through QEMU's statuses
//! (each a `JOB_STATUS_CHANGE` event), are listed by `query-jobs`, and
//! stay `concluded` until `job-dismiss` (QEMU creates them with manual
//! dismissal).
//!
//! A successful job goes `created`, `running`, `waiting`, `pending`,
//! `concluded`; a failed one `created`, `running`, `aborting`,
//! `concluded`, with its error kept for `query-jobs`; `job-dismiss` ends
//! either (`null`). The work runs on the main loop in one go, so a job's
//! statuses come in one burst.

/// A job's status, QEMU's `JobStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Made, not started.
    Created,
    /// Working.
    Running,
    /// Done, waiting for its transaction.
    Waiting,
    /// Done, to be finalized.
    Pending,
    /// Failed, cleaning up.
    Aborting,
    /// Finished; kept until dismissed.
    Concluded,
    /// Dismissed: gone.
    Null,
}

impl JobStatus {
    /// The QAPI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Pending => "pending",
            Self::Aborting => "aborting",
            Self::Concluded => "concluded",
            Self::Null => "null",
        }
    }
}

/// One job, as `query-jobs` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// Its id.
    pub id: String,
    /// `snapshot-save` or `snapshot-load`.
    pub kind: &'static str,
    /// Where it is.
    pub status: JobStatus,
    /// Why it failed.
    pub error: Option<String>,
}

/// The jobs not yet dismissed.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Vec<JobInfo>,
}

impl Jobs {
    /// Starts job `id` of `kind`: refused if the id is taken (QEMU's
    /// words). Returns the statuses it went through (`created`,
    /// `running`).
    pub fn start(&mut self, id: &str, kind: &'static str) -> Result<Vec<JobStatus>, String> {
        if id.is_empty() {
            return Err("Invalid job ID ''".into());
        }
        if self.jobs.iter().any(|j| j.id == id) {
            return Err(format!("Job ID '{id}' already in use"));
        }
        self.jobs.push(JobInfo {
            id: id.to_owned(),
            kind,
            status: JobStatus::Running,
            error: None,
        });
        Ok(vec![JobStatus::Created, JobStatus::Running])
    }

    /// Job `id`'s work ended with `result`: the statuses it goes through
    /// to `concluded`.
    pub fn finish(&mut self, id: &str, result: Result<(), String>) -> Vec<JobStatus> {
        let Some(job) = self.jobs.iter_mut().find(|j| j.id == id) else {
            return Vec::new();
        };
        job.status = JobStatus::Concluded;
        match result {
            Ok(()) => vec![JobStatus::Waiting, JobStatus::Pending, JobStatus::Concluded],
            Err(why) => {
                job.error = Some(why);
                vec![JobStatus::Aborting, JobStatus::Concluded]
            }
        }
    }

    /// `job-dismiss`: only a concluded job can be dismissed (QEMU's
    /// words otherwise).
    pub fn dismiss(&mut self, id: &str) -> Result<(), String> {
        let Some(i) = self.jobs.iter().position(|j| j.id == id) else {
            return Err(format!("Job not found: '{id}'"));
        };
        if self.jobs[i].status != JobStatus::Concluded {
            return Err(format!(
                "Job '{id}' in state '{}' cannot accept command verb 'dismiss'",
                self.jobs[i].status.as_str()
            ));
        }
        self.jobs.remove(i);
        Ok(())
    }

    /// The jobs, oldest first.
    pub fn list(&self) -> Vec<JobInfo> {
        self.jobs.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_goes_through_qemus_statuses_and_waits_to_be_dismissed() {
        let mut jobs = Jobs::default();
        assert_eq!(
            jobs.start("s0", "snapshot-save").unwrap(),
            [JobStatus::Created, JobStatus::Running]
        );
        assert_eq!(
            jobs.start("s0", "snapshot-save").unwrap_err(),
            "Job ID 's0' already in use"
        );
        assert!(jobs
            .dismiss("s0")
            .unwrap_err()
            .contains("in state 'running'"));
        assert_eq!(
            jobs.finish("s0", Ok(())),
            [JobStatus::Waiting, JobStatus::Pending, JobStatus::Concluded]
        );
        assert_eq!(jobs.list()[0].status, JobStatus::Concluded);
        jobs.dismiss("s0").unwrap();
        assert!(jobs.list().is_empty());
        assert_eq!(jobs.dismiss("s0").unwrap_err(), "Job not found: 's0'");
    }

    #[test]
    fn a_failed_job_keeps_its_error() {
        let mut jobs = Jobs::default();
        jobs.start("l", "snapshot-load").unwrap();
        assert_eq!(
            jobs.finish("l", Err("bad file".into())),
            [JobStatus::Aborting, JobStatus::Concluded]
        );
        assert_eq!(jobs.list()[0].error.as_deref(), Some("bad file"));
        assert_eq!(
            jobs.start("", "snapshot-load").unwrap_err(),
            "Invalid job ID ''"
        );
    }
}
