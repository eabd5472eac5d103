#include "server/job_store.h"

#include "common/status_macros.h"

#include <sqlite3.h>

#include "absl/strings/str_cat.h"

namespace quantd::server {
namespace {

// RAII for a prepared statement.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }
  sqlite3_stmt* get() { return s_; }
  void Text(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  void Blob(int i, const std::string& v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  void Int(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); }
  std::string ColBlob(int i) {
    const void* p = sqlite3_column_blob(s_, i);
    int n = sqlite3_column_bytes(s_, i);
    return p ? std::string(static_cast<const char*>(p), n) : std::string();
  }

 private:
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

// A task stored before worker API version 2 has its per-kind fields at the top level of Task
// (TaskStoredV1), where the current Task only keeps them as unknown fields: moves them into the
// kind's `work` message. Tasks stored since (no unknown fields) are returned unchanged.
void UpgradeStoredTask(const std::string& bytes, quantd::v1::Task* task) {
  if (task->GetReflection()->GetUnknownFields(*task).empty()) return;
  quantd::v1::TaskStoredV1 v1;
  if (!v1.ParseFromString(bytes)) return;
  switch (task->kind()) {
    case quantd::v1::TASK_KIND_HESSIAN: {
      quantd::v1::HessianTask* h = task->mutable_hessian();
      h->set_token_begin(v1.token_begin());
      h->set_token_end(v1.token_end());
      h->set_seq_len(v1.seq_len());
      h->set_layer(v1.layer());
      h->set_layer_count(v1.layer_count());
      break;
    }
    case quantd::v1::TASK_KIND_QUANTIZE: {
      quantd::v1::QuantizeTask* q = task->mutable_quantize();
      q->set_layer(v1.layer());
      q->set_linear(v1.linear());
      q->set_tensor_name(v1.tensor_name());
      q->set_seed(v1.seed());
      break;
    }
    case quantd::v1::TASK_KIND_EVAL: {
      quantd::v1::EvalTask* e = task->mutable_eval();
      e->set_target(v1.eval_target());
      e->set_context(v1.eval_context());
      if (v1.has_start_token_id()) e->set_start_token_id(v1.start_token_id());
      break;
    }
    case quantd::v1::TASK_KIND_FINETUNE: {
      // The block (field 41) parsed into `work` already; its sequences were flat.
      quantd::v1::FinetuneTask* f = task->mutable_finetune();
      f->set_seq_len(v1.seq_len());
      f->set_token_begin(v1.token_begin());
      f->set_token_end(v1.token_end());
      break;
    }
    default:
      return;
  }
  task->DiscardUnknownFields();
}

absl::Status SqlError(sqlite3* db, const std::string& what) {
  return absl::InternalError(absl::StrCat("job store: ", what, ": ", sqlite3_errmsg(db)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::InternalError(absl::StrCat("cannot open job store ", path, ": ", msg));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<JobStore> store(new JobStore(db));
  MutexLock l(&store->mu_);
  for (const char* sql : {
           "PRAGMA journal_mode=WAL;",
           "PRAGMA synchronous=FULL;",
           "CREATE TABLE IF NOT EXISTS jobs ("
           "  id TEXT PRIMARY KEY, request_id TEXT UNIQUE NOT NULL, created_ms INTEGER NOT NULL,"
           "  phase INTEGER NOT NULL, job BLOB NOT NULL);",
           "CREATE TABLE IF NOT EXISTS tasks ("
           "  job_id TEXT NOT NULL, task_id INTEGER NOT NULL, phase INTEGER NOT NULL,"
           "  state INTEGER NOT NULL, attempts INTEGER NOT NULL, task BLOB NOT NULL,"
           "  result BLOB, PRIMARY KEY (job_id, task_id));",
       }) {
    absl::Status s = store->Exec(sql);
    if (!s.ok()) return s;
  }
  return store;
}

JobStore::~JobStore() {
  MutexLock l(&mu_);
  sqlite3_close(db_);
}

absl::Status JobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("job store: ", msg, " in: ", sql));
  }
  return absl::OkStatus();
}

void JobStore::SetWriteFaultForTesting(std::function<absl::Status()> fault) {
  MutexLock l(&mu_);
  fault_ = std::move(fault);
}

absl::Status JobStore::InjectedFaultLocked() {
  return fault_ ? fault_() : absl::OkStatus();
}

absl::Status JobStore::InsertJob(const JobRow& row) {
  MutexLock l(&mu_);
  QUANTD_RETURN_IF_ERROR(InjectedFaultLocked());
  absl::Status s = Exec("BEGIN IMMEDIATE;");
  if (!s.ok()) return s;
  auto fail = [&](absl::Status st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Exec("ROLLBACK;").IgnoreError();
    return st;
  };
  {
    Stmt st(db_, "INSERT INTO jobs (id, request_id, created_ms, phase, job) VALUES (?,?,?,?,?)");
    if (!st.ok()) return fail(SqlError(db_, "prepare insert job"));
    st.Text(1, row.job.id());
    st.Text(2, row.job.request_id());
    st.Int(3, row.job.created_unix_ms());
    st.Int(4, row.phase);
    st.Blob(5, row.job.SerializeAsString());
    int rc = sqlite3_step(st.get());
    if (rc == SQLITE_CONSTRAINT) {
      return fail(absl::AlreadyExistsError(
          absl::StrCat("request id ", row.job.request_id(), " already used")));
    }
    if (rc != SQLITE_DONE) return fail(SqlError(db_, "insert job"));
  }
  for (const TaskRow& t : row.tasks) {
    Stmt st(db_,
            "INSERT INTO tasks (job_id, task_id, phase, state, attempts, task, result) "
            "VALUES (?,?,?,?,?,?,?)");
    if (!st.ok()) return fail(SqlError(db_, "prepare insert task"));
    st.Text(1, row.job.id());
    st.Int(2, t.task_id);
    st.Int(3, t.phase);
    st.Int(4, static_cast<int>(t.state));
    st.Int(5, t.attempts);
    st.Blob(6, t.task.SerializeAsString());
    st.Blob(7, t.result.SerializeAsString());
    if (sqlite3_step(st.get()) != SQLITE_DONE) return fail(SqlError(db_, "insert task"));
  }
  s = Exec("COMMIT;");
  if (!s.ok()) return fail(s);
  return absl::OkStatus();
}

absl::Status JobStore::UpdateJobLocked(const quantd::v1::Job& job, int phase) {
  Stmt st(db_, "UPDATE jobs SET phase = ?, job = ? WHERE id = ?");
  if (!st.ok()) return SqlError(db_, "prepare update job");
  st.Int(1, phase);
  st.Blob(2, job.SerializeAsString());
  st.Text(3, job.id());
  if (sqlite3_step(st.get()) != SQLITE_DONE) return SqlError(db_, "update job");
  return absl::OkStatus();
}

absl::Status JobStore::UpdateTaskLocked(const std::string& job_id, const TaskRow& t) {
  Stmt st(db_, "UPDATE tasks SET state = ?, attempts = ?, result = ? WHERE job_id = ? AND task_id = ?");
  if (!st.ok()) return SqlError(db_, "prepare update task");
  st.Int(1, static_cast<int>(t.state));
  st.Int(2, t.attempts);
  st.Blob(3, t.result.SerializeAsString());
  st.Text(4, job_id);
  st.Int(5, t.task_id);
  if (sqlite3_step(st.get()) != SQLITE_DONE) return SqlError(db_, "update task");
  return absl::OkStatus();
}

absl::Status JobStore::UpdateJob(const quantd::v1::Job& job, int phase) {
  MutexLock l(&mu_);
  QUANTD_RETURN_IF_ERROR(InjectedFaultLocked());
  return UpdateJobLocked(job, phase);
}

absl::Status JobStore::UpdateTask(const std::string& job_id, const TaskRow& task) {
  MutexLock l(&mu_);
  QUANTD_RETURN_IF_ERROR(InjectedFaultLocked());
  return UpdateTaskLocked(job_id, task);
}

absl::Status JobStore::UpdateJobAndTasks(const quantd::v1::Job& job, int phase,
                                         const std::vector<const TaskRow*>& tasks) {
  MutexLock l(&mu_);
  QUANTD_RETURN_IF_ERROR(InjectedFaultLocked());
  absl::Status s = Exec("BEGIN IMMEDIATE;");
  if (!s.ok()) return s;
  s = UpdateJobLocked(job, phase);
  for (const TaskRow* t : tasks) {
    if (!s.ok()) break;
    s = UpdateTaskLocked(job.id(), *t);
  }
  if (!s.ok()) {
    Exec("ROLLBACK;").IgnoreError();
    return s;
  }
  return Exec("COMMIT;");
}

absl::StatusOr<std::vector<JobRow>> JobStore::LoadAll() {
  MutexLock l(&mu_);
  std::vector<JobRow> rows;
  {
    Stmt st(db_, "SELECT phase, job FROM jobs ORDER BY created_ms, id");
    if (!st.ok()) return SqlError(db_, "prepare load jobs");
    int rc;
    while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
      JobRow row;
      row.phase = sqlite3_column_int(st.get(), 0);
      if (!row.job.ParseFromString(st.ColBlob(1))) {
        return absl::DataLossError("job store: a job row does not parse");
      }
      rows.push_back(std::move(row));
    }
    if (rc != SQLITE_DONE) return SqlError(db_, "load jobs");
  }
  for (JobRow& row : rows) {
    Stmt st(db_,
            "SELECT task_id, phase, state, attempts, task, result FROM tasks WHERE job_id = ? "
            "ORDER BY task_id");
    if (!st.ok()) return SqlError(db_, "prepare load tasks");
    st.Text(1, row.job.id());
    int rc;
    while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
      TaskRow t;
      t.task_id = sqlite3_column_int64(st.get(), 0);
      t.phase = sqlite3_column_int(st.get(), 1);
      t.state = static_cast<TaskRowState>(sqlite3_column_int(st.get(), 2));
      t.attempts = sqlite3_column_int(st.get(), 3);
      const std::string task_bytes = st.ColBlob(4);
      if (!t.task.ParseFromString(task_bytes) || !t.result.ParseFromString(st.ColBlob(5))) {
        return absl::DataLossError(
            absl::StrCat("job store: task ", t.task_id, " of job ", row.job.id(), " does not parse"));
      }
      UpgradeStoredTask(task_bytes, &t.task);
      row.tasks.push_back(std::move(t));
    }
    if (rc != SQLITE_DONE) return SqlError(db_, "load tasks");
  }
  return rows;
}

}  // namespace quantd::server
