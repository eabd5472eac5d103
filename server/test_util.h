// Test helpers for the coordinator's tests: a small job request on the in-repo example data
// (located through QUANTD_SOURCE_DIR, engine/model/test_util.h).
// Thread-safety: stateless functions (test-only).
#ifndef QUANTD_SERVER_TEST_UTIL_H_
#define QUANTD_SERVER_TEST_UTIL_H_

#include <string>

#include "engine/model/test_util.h"
#include "proto/quantd.pb.h"

namespace quantd::server::testing {

// `method` at 4 bits on stories260K with 2 calibration sequences of TinyStories tokens.
inline quantd::v1::SubmitJobRequest StoriesRequest(const std::string& request_id,
                                                   const std::string& name,
                                                   const std::string& method) {
  quantd::v1::SubmitJobRequest r;
  r.set_request_id(request_id);
  r.set_name(name);
  r.set_model_dir(model::testing::ExamplePath("stories260K"));
  r.set_calib_path(model::testing::ExamplePath("tinystories/calib_stories_0_499.u16"));
  r.set_max_calib_seqs(2);
  r.mutable_spec()->set_method(method);
  r.mutable_spec()->set_bits(4);
  return r;
}

}  // namespace quantd::server::testing

#endif  // QUANTD_SERVER_TEST_UTIL_H_
