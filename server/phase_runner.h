// PhaseRunner: the coordinator's own work between task phases, run on the engine thread.
// When every task of a job's current phase is done it runs that phase's step (merge the
// Hessian shards; drop a finished stage's Hessians; assemble the artifact in the registry's
// staging directory; write the manifest and publish), then moves the job to its next phase
// through a JobTable transition. A step that fails transiently is retried with back-off, up to
// max_step_attempts; for good, the job fails. It also checks, before anything of them runs, that
// jobs reloaded after a restart still have the inputs and spec they were submitted with, and
// removes the work directories of ended jobs.
//
// Each step is idempotent (after a crash the engine runs it again from the stored task results)
// and runs without the JobTable's lock (file work); it reads a copy of the job and its rows.
// Thread-safety: call from one thread (the engine thread); the JobTable it changes is
// thread-safe.
#ifndef QUANTD_SERVER_PHASE_RUNNER_H_
#define QUANTD_SERVER_PHASE_RUNNER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/quantd.pb.h"
#include "server/job_table.h"
#include "server/registry.h"

namespace quantd::server {

class PhaseRunner {
 public:
  // `max_step_attempts`: tries of one step before the job fails (Default in CoordinatorOptions).
  PhaseRunner(JobTable* table, Registry* registry, int max_step_attempts)
      : table_(table), registry_(registry), max_step_attempts_(max_step_attempts) {}

  // Checks the reloaded jobs marked inputs_unverified (hashing their snapshots without a lock),
  // failing those whose inputs or spec changed. Appends the jobs it changed to `changed`.
  void VerifyRecoveredJobs(std::vector<quantd::v1::Job>* changed);
  // Runs the step of every job whose current phase is complete, one job at a time, and applies
  // its outcome. Appends the jobs it changed to `changed`.
  void RunSteps(std::vector<quantd::v1::Job>* changed);
  // Removes the work directory (and, unless it succeeded, the staging directory) of every
  // ended job in `changed`.
  void CleanUp(const std::vector<quantd::v1::Job>& changed);

 private:
  // Why a restarted coordinator must not resume `job` ("" = it may).
  std::string ResumeRefusal(const quantd::v1::Job& job) const;
  // Applies the outcome `s` of the step of `phase` to `e`: the next phase on success, a retry
  // with back-off on a transient failure. Returns the job's error when the step failed for good
  // (the caller removes the staging directory, then fails the job), else "".
  std::string ApplyStepResultLocked(JobEntry& e, int phase, const std::string& step,
                                    const absl::Status& s, int published_version,
                                    std::vector<quantd::v1::Job>* changed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_->mu());

  // The steps (job_steps.cc), without any lock held.
  // Merges the Hessian shards of phase `phase` (all of a one-stage job's, one layer's in a
  // sequential job).
  absl::Status MergeHessians(const quantd::v1::Job& job, int phase,
                             const std::vector<TaskRow>& tasks);
  // Deletes the Hessian shards of the stage whose quantize phase `phase` has finished and the
  // merged Hessians its quantize tasks read, so the coordinator's disk holds one stage's
  // Hessian data at a time (docs/ARCHITECTURE.md). Idempotent.
  absl::Status DropStageHessians(const quantd::v1::Job& job, int phase,
                                 const std::vector<TaskRow>& tasks);
  absl::Status Assemble(const quantd::v1::Job& job, const std::vector<TaskRow>& tasks);
  // Returns the published version.
  absl::StatusOr<int> Publish(const quantd::v1::Job& job, const std::vector<TaskRow>& tasks);

  JobTable* const table_;
  Registry* const registry_;
  const int max_step_attempts_;
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_PHASE_RUNNER_H_
