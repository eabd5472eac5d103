#include "engine/quant/quantize.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "engine/quant/block_ldlq.h"
#include "engine/quant/butterfly.h"
#include "engine/quant/codebook.h"
#include "engine/quant/damping.h"
#include "engine/quant/ldlq.h"
#include "engine/quant/packed_matrix.h"
#include "engine/quant/rht.h"
#include "engine/quant/rtn.h"
#include "engine/quant/trellis.h"

namespace quantd::quant {
namespace {

// The output-side RHT uses seed ^ kOutSeedMix so that square matrices get independent signs.
constexpr uint64_t kOutSeedMix = 0xC2B2AE3D27D4EB4Full;
constexpr int kMaxDim = 1 << 24;

const char* CodebookForBits(int bits) {
  switch (bits) {
    case 2: return "e8p";
    case 3: return "rvq3";
    default: return "rvq4";
  }
}

// One grid for the whole matrix (QuIP scalar grid).
class FixedGridRounder : public ColumnRounder {
 public:
  explicit FixedGridRounder(ScalarGrid g) : g_(g) {}
  int Round(int, int, double x, double* xhat) override {
    const int q = g_.Code(x);
    *xhat = g_.Dequant(q);
    return q;
  }

 private:
  ScalarGrid g_;
};

// GPTQ grids: per output channel fit on the whole (dead-column-zeroed) row, or per group fit on
// the error-fed columns when the group is reached.
// With `perm` (act order: LDLQ column j is original column perm[j]) the groups are static, as
// AutoGPTQ's static_groups: every grid is fit up front on the original columns of its group, so
// the grids do not depend on the order in which the sweep reaches the columns.
class GptqRounder : public ColumnRounder {
 public:
  // diag (optional, n entries in the original column order): the Hessian diagonal that weights
  // each grid's fit (QuantSpec::hessian_scale).
  GptqRounder(const MatrixD& w, const RtnParams& p, const std::vector<int>* perm = nullptr,
              const std::vector<double>* diag = nullptr)
      : p_(p), groups_(NumGroups(static_cast<int>(w.cols()), p.group_size)),
        gs_(groups_ == 1 ? 0 : p.group_size), perm_(perm), diag_(diag),
        grids_(static_cast<size_t>(w.rows()) * groups_) {
    if (gs_ == 0) {
      for (int r = 0; r < w.rows(); ++r) grids_[r] = Fit(&w(r, 0), 0, w.cols());
    } else if (perm_ != nullptr) {
      for (int r = 0; r < w.rows(); ++r) {
        for (int g = 0; g < groups_; ++g) {
          const int c0 = g * gs_, len = std::min<int>(gs_, w.cols() - c0);
          grids_[static_cast<size_t>(r) * groups_ + g] = Fit(&w(r, c0), c0, len);
        }
      }
    }
  }
  int group_size() const override { return perm_ != nullptr ? 0 : gs_; }
  void BeginGroup(int k, const MatrixD& block) override {
    const int g = k / gs_;
    for (int r = 0; r < block.rows(); ++r) {
      grids_[static_cast<size_t>(r) * groups_ + g] =
          Fit(&block(r, 0), k, static_cast<int>(block.cols()));
    }
  }
  int Round(int row, int col, double x, double* xhat) override {
    const int orig = perm_ != nullptr ? (*perm_)[col] : col;
    const ScalarGrid& g = grids_[static_cast<size_t>(row) * groups_ + (gs_ ? orig / gs_ : 0)];
    const int q = g.Code(x);
    *xhat = g.Dequant(q);
    return q;
  }
  std::vector<ScalarGrid> TakeGrids() { return std::move(grids_); }

 private:
  // Columns [c0, c0 + len) of the original order (without act order the sweep's order is the
  // original one).
  ScalarGrid Fit(const double* w, int c0, int len) const {
    return diag_ != nullptr ? FitWeightedGrid(w, diag_->data() + c0, len, p_)
                            : FitMinMaxGrid(w, len, p_);
  }

  RtnParams p_;
  int groups_;
  int gs_;
  const std::vector<int>* perm_;
  const std::vector<double>* diag_;
  std::vector<ScalarGrid> grids_;
};

double Rms(const MatrixD& w) {
  return w.size() == 0 ? 0.0 : std::sqrt(w.squaredNorm() / static_cast<double>(w.size()));
}

// Builds both RHTs and checks stored signs against them.
absl::Status MakeRhts(int m, int n, uint64_t seed, std::unique_ptr<Rht>* out_rht,
                      std::unique_ptr<Rht>* in_rht) {
  QUANTD_ASSIGN_OR_RETURN(Rht o, MakeRht(m, seed ^ kOutSeedMix));
  QUANTD_ASSIGN_OR_RETURN(Rht i, MakeRht(n, seed));
  *out_rht = std::make_unique<Rht>(std::move(o));
  *in_rht = std::make_unique<Rht>(std::move(i));
  return absl::OkStatus();
}

void AppendNote(std::string* note, std::string_view more) {
  if (more.empty()) return;
  if (!note->empty()) note->append("; ");
  note->append(more);
}

// QTIP works on 16×16 tiles of the incoherence-processed weight.
constexpr int kTile = 16;
int RoundUpToTile(int x) { return (x + kTile - 1) / kTile * kTile; }

// Input scale for unit-RMS weights, measured on N(0,1) at L = 16, k = 2 (quantd-bench codebook
// --codebook trellis-*; docs/benchmarks.md): 1MAD's values have unit variance, 3INST's ≈ 1.55.
double DefaultTrellisScale(TrellisCode code) {
  switch (code) {
    case TrellisCode::k1Mad: return 0.95;
    case TrellisCode::k3Inst: return 1.2;
    case TrellisCode::kHyb: return 1.05;
  }
  return 1.0;
}

absl::StatusOr<Trellis> TrellisOf(const PackedContents& c) {
  TrellisConfig t{static_cast<TrellisCode>(c.trellis_code), c.trellis_l, c.bits, c.trellis_v};
  return Trellis::Make(t, c.hyb_table);
}

// QTIP after the RHT: pads W̃ [m×n] and the damped H̃ to multiples of 16 (zero weights; padded
// inputs get H_ii = mean diag, independent of the rest), runs block LDLQ with g = 16 whose block
// quantizer encodes each 16×16 tile with the tail-biting trellis, and fills c's codes.
absl::Status QuantizeQtip(Device& dev, const QuantSpec& spec, const MatrixD& w, const MatrixD& h,
                          const MatrixD& lower, PackedContents* c) {
  const int m = static_cast<int>(w.rows()), n = static_cast<int>(w.cols());
  const int mp = RoundUpToTile(m), np = RoundUpToTile(n);
  const double rms = Rms(w);
  c->weight_scale = rms > 0 ? static_cast<float>(rms) : 1.0f;
  c->trellis_code = static_cast<uint8_t>(spec.trellis_code);
  c->trellis_l = spec.trellis_l;
  c->trellis_v = spec.trellis_code == TrellisCode::kHyb ? 2 : 1;
  c->trellis_scale =
      spec.codebook_scale > 0 ? spec.codebook_scale : DefaultTrellisScale(spec.trellis_code);
  if (spec.trellis_code == TrellisCode::kHyb) c->hyb_table = DefaultHybTable();
  QUANTD_ASSIGN_OR_RETURN(Trellis trellis, TrellisOf(*c));
  const double to_unit = c->trellis_scale / static_cast<double>(c->weight_scale);
  MatrixD y = MatrixD::Zero(mp, np);
  y.topLeftCorner(m, n) = w * to_unit;
  MatrixD hp = MatrixD::Zero(np, np), lp = MatrixD::Zero(np, np);
  const double pad_diag = h.diagonal().mean() > 0 ? h.diagonal().mean() : 1.0;
  hp.topLeftCorner(n, n) = h;
  lp.topLeftCorner(n, n) = lower;
  for (int i = n; i < np; ++i) {
    hp(i, i) = pad_diag;
    lp(i, i) = std::sqrt(pad_diag);
  }
  const int row_tiles = mp / kTile, col_tiles = np / kTile, V = c->trellis_v;
  const int steps = kTile * kTile / V;
  c->codes.assign(static_cast<size_t>(row_tiles) * col_tiles * steps, 0);
  auto quantize = [&](const MatrixD& x, int block, MatrixD* q) {
    q->resize(x.rows(), x.cols());
#pragma omp parallel for schedule(dynamic)
    for (int t = 0; t < row_tiles; ++t) {
      float in[kTile * kTile], out[kTile * kTile];
      for (int i = 0; i < kTile; ++i) {
        for (int j = 0; j < kTile; ++j) in[i * kTile + j] = static_cast<float>(x(t * kTile + i, j));
      }
      uint16_t* codes = &c->codes[(static_cast<size_t>(t) * col_tiles + block) * steps];
      trellis.EncodeTailBiting(in, kTile * kTile, codes, out);
      for (int i = 0; i < kTile; ++i) {
        for (int j = 0; j < kTile; ++j) (*q)(t * kTile + i, j) = out[i * kTile + j];
      }
    }
  };
  return BlockLdlqWith(dev, y, hp, lp, kTile, 0, quantize).status();
}

// The incoherence-processed weight W̃ [m×n] a qtip packed matrix decodes to.
absl::StatusOr<MatrixD> DequantizeQtip(const PackedContents& c) {
  QUANTD_ASSIGN_OR_RETURN(Trellis trellis, TrellisOf(c));
  const int row_tiles = RoundUpToTile(c.m) / kTile, col_tiles = RoundUpToTile(c.n) / kTile;
  const int steps = kTile * kTile / c.trellis_v;
  const double from_unit = static_cast<double>(c.weight_scale) / c.trellis_scale;
  MatrixD wt(c.m, c.n);
  float out[kTile * kTile];
  for (int t = 0; t < row_tiles; ++t) {
    for (int b = 0; b < col_tiles; ++b) {
      trellis.DecodeTailBiting(&c.codes[(static_cast<size_t>(t) * col_tiles + b) * steps],
                               kTile * kTile, out);
      for (int i = 0; i < kTile && t * kTile + i < c.m; ++i) {
        for (int j = 0; j < kTile && b * kTile + j < c.n; ++j) {
          wt(t * kTile + i, b * kTile + j) = out[i * kTile + j] * from_unit;
        }
      }
    }
  }
  return wt;
}

// The unrotated LDLQ baseline the guard compares a rotated method against: gptq at the same bits,
// per output channel, same damping; no guard of its own.
QuantSpec BaselineSpec(const QuantSpec& spec) {
  QuantSpec b;
  b.method = Method::kGptq;
  b.bits = spec.bits;
  b.seed = spec.seed;
  b.damp = spec.damp;
  b.baseline_guard = false;
  return b;
}

// The butterfly with its angles rounded to the f32 values the packed matrix stores, so that the
// quantizer and every reader use the same G.
Butterfly StoredButterfly(const Butterfly& b) {
  Butterfly r = b;
  for (double& a : r.mutable_angles()) a = static_cast<double>(static_cast<float>(a));
  return r;
}

struct ButterflyRounding {
  LdlqResult ldlq;
  ScalarGrid grid;
  double loss = 0;  // relative proxy loss against the undamped H̃
};

// LDLQ with the QuIP grid of W̃·G under the rotated damped Hessian Gᵀ·H̃_damped·G.
absl::StatusOr<ButterflyRounding> RoundButterfly(Device& dev, const Butterfly& b,
                                                 const MatrixD& wt, const MatrixD& h_damped,
                                                 const MatrixD& h, int bits) {
  const MatrixD g = b.Matrix();
  MatrixD y = wt;
  b.ApplyRows(&y);
  MatrixD hg = g.transpose() * h_damped * g;
  hg = 0.5 * (hg + hg.transpose()).eval();
  ButterflyRounding r;
  r.grid = QuipGrid(Rms(y), bits);
  FixedGridRounder rounder(r.grid);
  QUANTD_ASSIGN_OR_RETURN(r.ldlq, LdlqGptq(dev, y, hg, rounder));
  r.loss = RelativeProxyLoss(y, r.ldlq.what, g.transpose() * h * g);
  return r;
}

// Method butterfly after the RHT: learns G on (W̃, H̃) scoring candidates with the real LDLQ
// rounding, then rounds W̃·G with the best one and fills c's grid, codes and angles.
absl::Status QuantizeButterfly(Device& dev, const QuantSpec& spec, const MatrixD& wt,
                               const MatrixD& h, const MatrixD& h_damped, PackedContents* c) {
  ButterflyParams bp;
  bp.bits = spec.bits;
  auto score = [&](const Butterfly& b) {
    auto r = RoundButterfly(dev, StoredButterfly(b), wt, h_damped, h, spec.bits);
    return r.ok() ? r->loss : std::numeric_limits<double>::infinity();
  };
  QUANTD_ASSIGN_OR_RETURN(Butterfly learned, LearnButterfly(dev, wt, h, bp, score));
  const Butterfly b = StoredButterfly(learned);
  QUANTD_ASSIGN_OR_RETURN(ButterflyRounding r, RoundButterfly(dev, b, wt, h_damped, h, spec.bits));
  c->grids = {r.grid};
  c->codes = std::move(r.ldlq.codes);
  c->angles.assign(b.angles().begin(), b.angles().end());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Method> ParseMethod(std::string_view name) {
  QUANTD_ASSIGN_OR_RETURN(const MethodTraits* t, FindMethod(name));
  return t->method;
}

std::string_view MethodName(Method m) { return TraitsOf(m).name; }

RtnParams RtnParamsFor(const QuantSpec& spec) {
  const GridShape shape = GridShapeOf(spec.grid);
  RtnParams p;
  p.bits = spec.bits;
  p.form = shape.form;
  p.group_size = spec.group_size;
  p.mse_clip = spec.mse_clip;
  p.fp16_scale = shape.fp16_scale;
  return p;
}

absl::Status ValidateSpec(const QuantSpec& s) {
  const MethodTraits& t = TraitsOf(s.method);
  if (t.bits_mask == 0) {
    return absl::InvalidArgumentError(absl::StrCat("unknown method ", static_cast<int>(s.method)));
  }
  const std::string name(t.name);
  if (s.grid != GridTarget::kDefault) {
    const int gv = static_cast<int>(s.grid);
    if (gv < 1 || gv > 7) return absl::InvalidArgumentError(absl::StrCat("unknown grid ", gv));
    const std::string grid(GridTargetName(s.grid));
    const GridShape shape = GridShapeOf(s.grid);
    if (!t.export_grid) {
      return absl::InvalidArgumentError(
          absl::StrCat("grid ", grid, " applies to rtn and gptq only, not ", name));
    }
    if (shape.bits != 0 && s.bits != shape.bits) {
      return absl::InvalidArgumentError(
          absl::StrCat("grid ", grid, " holds ", shape.bits, "-bit codes, not bits = ", s.bits));
    }
    if (shape.group_size != 0 && s.group_size != shape.group_size) {
      return absl::InvalidArgumentError(absl::StrCat("grid ", grid, " has groups of ",
                                                     shape.group_size, " weights, not group_size = ",
                                                     s.group_size));
    }
    if (s.bits == 5) {
      if (s.group_size < 0) {
        return absl::InvalidArgumentError(absl::StrCat("group_size = ", s.group_size, " is invalid"));
      }
      return ValidateSpec([&] {
        QuantSpec four = s;  // 5 bits are checked like 4 once the grid allowed them
        four.bits = 4;
        four.grid = GridTarget::kDefault;
        return four;
      }());
    }
  }
  if (!BitsAllowed(t, s.bits)) {
    std::vector<std::string> widths;
    for (int b = 0; b < 32; ++b) {
      if (BitsAllowed(t, b)) widths.push_back(absl::StrCat(b));
    }
    return absl::InvalidArgumentError(absl::StrCat("bits = ", s.bits, " is not supported by ", name,
                                                   " (", absl::StrJoin(widths, ", "), ")"));
  }
  if (s.group_size < 0 || (s.group_size > 0 && !t.scalar_grid)) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_size = ", s.group_size, " is invalid for ", name));
  }
  if (s.hessian_scale && !t.scalar_grid) {
    return absl::InvalidArgumentError(absl::StrCat("hessian_scale is not supported by ", name));
  }
  if (s.mse_clip && !t.scalar_grid) {
    return absl::InvalidArgumentError(absl::StrCat("mse_clip is not supported by ", name));
  }
  if (s.act_order && !t.act_order) {
    return absl::InvalidArgumentError(
        absl::StrCat("act_order is supported by gptq and quarot, not by ", name));
  }
  if (s.greedy_passes < 0 || s.greedy_passes > 100 || (s.greedy_passes > 0 && !t.greedy_passes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("greedy_passes = ", s.greedy_passes, " is invalid for ", name));
  }
  if (!std::isfinite(s.codebook_scale) || s.codebook_scale < 0 ||
      (s.codebook_scale != 0 && !t.codebook_scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("codebook_scale = ", s.codebook_scale, " is invalid for ", name));
  }
  if (t.trellis) {
    TrellisConfig tc{s.trellis_code, s.trellis_l, s.bits, s.trellis_code == TrellisCode::kHyb ? 2 : 1};
    QUANTD_RETURN_IF_ERROR(ValidateTrellisConfig(tc));
  }
  if (!(s.damp > 0 && s.damp <= 10)) {
    return absl::InvalidArgumentError(absl::StrCat("damp = ", s.damp, " must be in (0, 10]"));
  }
  return absl::OkStatus();
}

namespace {

// The packed header fields every method sets alike (an unpadded m x n matrix).
PackedContents NewContents(const QuantSpec& spec, int m, int n) {
  PackedContents c;
  c.method = static_cast<uint8_t>(spec.method);
  c.bits = spec.bits;
  c.m = m;
  c.n = n;
  c.n_padded = n;
  c.seed = spec.seed;
  return c;
}

// rtn's grids and codes into `c` (whose method, bits and shape are set); `diag` is H's
// diagonal for hessian_scale, else null.
absl::Status FillRtn(const QuantSpec& spec, const MatrixD& wd, const double* diag,
                     PackedContents* c) {
  c->group_size = spec.group_size;
  QUANTD_ASSIGN_OR_RETURN(RtnResult r, QuantizeRtn(wd, RtnParamsFor(spec), diag));
  c->grids = std::move(r.grids);
  c->codes.assign(r.codes.begin(), r.codes.end());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<QuantizedMatrix> QuantizeMatrixNoHessian(const MatrixF& w, const QuantSpec& spec,
                                                        std::string_view layer_name) {
  QUANTD_RETURN_IF_ERROR(ValidateSpec(spec));
  if (spec.method != Method::kRtn || spec.hessian_scale) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", std::string(layer_name), ": ", std::string(MethodName(spec.method)),
        spec.hessian_scale ? " with hessian_scale" : "", " needs a Hessian; only rtn runs without"));
  }
  const int m = static_cast<int>(w.rows()), n = static_cast<int>(w.cols());
  if (m <= 0 || n <= 0 || m > kMaxDim || n > kMaxDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", std::string(layer_name), ": weight shape [", m, ",", n, "] is out of range"));
  }
  if (!w.allFinite()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", std::string(layer_name), ": weight contains NaN or Inf"));
  }
  PackedContents c = NewContents(spec, m, n);
  const MatrixD wd = w.cast<double>();
  QUANTD_RETURN_IF_ERROR(FillRtn(spec, wd, nullptr, &c));
  QuantizedMatrix result;
  QUANTD_ASSIGN_OR_RETURN(result.packed, EncodePacked(c));
  QUANTD_ASSIGN_OR_RETURN(MatrixF what, DequantizeMatrix(result.packed));
  const double den = wd.squaredNorm();
  result.proxy_loss = den == 0 ? 0 : (what.cast<double>() - wd).squaredNorm() / den;
  result.weight_energy = den;  // tr(W H Wᵀ) with H = I
  result.rotated_proxy_loss = result.proxy_loss;
  result.stored_method = Method::kRtn;
  result.note = "no calibration data: proxy loss with H = I (relative weight error)";
  return result;
}

absl::StatusOr<QuantizedMatrix> QuantizeMatrix(Device& dev, const MatrixF& w, const MatrixD& h,
                                               const QuantSpec& spec,
                                               std::string_view layer_name) {
  QUANTD_RETURN_IF_ERROR(ValidateSpec(spec));
  const int m = static_cast<int>(w.rows()), n = static_cast<int>(w.cols());
  if (m <= 0 || n <= 0 || m > kMaxDim || n > kMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", std::string(layer_name), ": weight shape [", m, ",", n, "] is out of range"));
  }
  QUANTD_RETURN_IF_ERROR(CheckFiniteInputs(w, h, layer_name));
  if (spec.method == Method::kQuarot) {
    // The rotations live in the model (the caller passes the rotated weight and its Hessian);
    // the matrix itself is plain GPTQ, stored as such.
    QuantSpec g = spec;
    g.method = Method::kGptq;
    g.baseline_guard = false;
    QUANTD_ASSIGN_OR_RETURN(QuantizedMatrix q, QuantizeMatrix(dev, w, h, g, layer_name));
    AppendNote(&q.note, "quarot: gptq of the rotated weight");
    return q;
  }

  QuantizedMatrix result;
  PackedContents c = NewContents(spec, m, n);
  MatrixD wd = w.cast<double>();
  MatrixD hd = h;

  if (spec.method == Method::kRtn) {
    std::vector<double> diag;
    if (spec.hessian_scale) {
      diag.resize(n);
      for (int j = 0; j < n; ++j) diag[j] = hd(j, j);
    }
    QUANTD_RETURN_IF_ERROR(FillRtn(spec, wd, spec.hessian_scale ? diag.data() : nullptr, &c));
  } else {
    const int dead = FixDeadColumns(&hd, &wd);
    if (dead > 0) {
      AppendNote(&result.note, absl::StrCat(dead, " dead input columns (H_ii = 0) zeroed"));
    }
    if (spec.method == Method::kGptq) {
      c.group_size = spec.group_size;
      // hessian_scale: the undamped diagonal (dead columns already zeroed), E[x_i^2] as an
      // importance matrix collects it.
      std::vector<double> diag;
      if (spec.hessian_scale) {
        diag.resize(n);
        for (int j = 0; j < n; ++j) diag[j] = hd(j, j);
      }
      const std::vector<double>* dp = spec.hessian_scale ? &diag : nullptr;
      QUANTD_ASSIGN_OR_RETURN(DampedHessian dh,
                              DampAndFactor(dev, hd, spec.damp, DampStyle::kGptq, layer_name));
      AppendNote(&result.note, dh.note);
      if (spec.act_order) {
        // Per-channel and static group grids do not depend on the column order, so only the
        // LDLQ sweep is permuted; the codes go back to the original column order for the
        // packed format.
        std::vector<int> perm(n);
        for (int j = 0; j < n; ++j) perm[j] = j;
        std::stable_sort(perm.begin(), perm.end(),
                         [&](int a, int b) { return hd(a, a) > hd(b, b); });
        GptqRounder rounder(wd, RtnParamsFor(spec), &perm, dp);
        MatrixD wp(m, n), hp(n, n);
        for (int j = 0; j < n; ++j) wp.col(j) = wd.col(perm[j]);
        for (int i = 0; i < n; ++i) {
          for (int j = 0; j < n; ++j) hp(i, j) = dh.h(perm[i], perm[j]);
        }
        QUANTD_ASSIGN_OR_RETURN(LdlqResult r, LdlqGptq(dev, wp, hp, rounder));
        c.codes.resize(r.codes.size());
        for (int row = 0; row < m; ++row) {
          for (int j = 0; j < n; ++j) {
            c.codes[static_cast<size_t>(row) * n + perm[j]] = r.codes[static_cast<size_t>(row) * n + j];
          }
        }
        c.grids = rounder.TakeGrids();
      } else {
        GptqRounder rounder(wd, RtnParamsFor(spec), nullptr, dp);
        QUANTD_ASSIGN_OR_RETURN(LdlqResult r, LdlqGptq(dev, wd, dh.h, rounder));
        c.codes = std::move(r.codes);
        c.grids = rounder.TakeGrids();
      }
    } else {
      // Incoherence processing; quip-sharp first pads n to a multiple of 8 with zero columns.
      if (spec.method == Method::kQuipSharp && n % 8 != 0) {
        c.n_padded = (n + 7) / 8 * 8;
        MatrixD wp = MatrixD::Zero(m, c.n_padded);
        wp.leftCols(n) = wd;
        // Padded inputs get H_ii = mean(diag H), i.e. 1 after the QuIP# normalization.
        const double mean_diag = hd.diagonal().mean();
        MatrixD hp = MatrixD::Identity(c.n_padded, c.n_padded) * (mean_diag > 0 ? mean_diag : 1.0);
        hp.topLeftCorner(n, n) = hd;
        wd = std::move(wp);
        hd = std::move(hp);
      }
      std::unique_ptr<Rht> out_rht, in_rht;
      QUANTD_RETURN_IF_ERROR(MakeRhts(m, c.n_padded, spec.seed, &out_rht, &in_rht));
      RhtWeight(*out_rht, *in_rht, &wd);
      RhtHessian(*in_rht, &hd);
      c.rht = true;
      c.signs_m = out_rht->signs();
      c.signs_n = in_rht->signs();
      QUANTD_ASSIGN_OR_RETURN(DampedHessian dh, DampAndFactor(dev, hd, spec.damp,
                                                              DampStyle::kQuipSharp, layer_name));
      AppendNote(&result.note, dh.note);
      if (spec.method == Method::kQtip) {
        QUANTD_RETURN_IF_ERROR(QuantizeQtip(dev, spec, wd, dh.h, dh.lower, &c));
      } else if (spec.method == Method::kButterfly) {
        QUANTD_RETURN_IF_ERROR(QuantizeButterfly(dev, spec, wd, hd, dh.h, &c));
      } else if (spec.method == Method::kQuip) {
        c.grids = {QuipGrid(Rms(wd), spec.bits)};
        FixedGridRounder rounder(c.grids[0]);
        QUANTD_ASSIGN_OR_RETURN(LdlqResult r, LdlqGptq(dev, wd, dh.h, rounder));
        c.codes = std::move(r.codes);
      } else {
        c.codebook = CodebookForBits(spec.bits);
        c.codebook_scale = spec.codebook_scale;
        QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<VectorCodebook> cb,
                                MakeCodebook(c.codebook, c.codebook_scale));
        if (cb->bits_per_weight() != spec.bits || c.n_padded % cb->dim() != 0) {
          return absl::InternalError(absl::StrCat("codebook ", c.codebook, " spends ",
                                                  cb->bits_per_weight(), " bits/weight in blocks of ",
                                                  cb->dim(), ", expected ", spec.bits, " and 8"));
        }
        c.vector_dim = cb->dim();
        c.codes_per_vector = cb->codes_per_vector();
        const double rms = Rms(wd);
        c.weight_scale = rms > 0 ? static_cast<float>(rms) : 1.0f;
        wd /= static_cast<double>(c.weight_scale);
        QUANTD_ASSIGN_OR_RETURN(
            BlockLdlqResult r,
            BlockLdlq(dev, wd, dh.h, dh.lower, *cb, BlockLdlqParams{spec.greedy_passes}));
        c.codes = std::move(r.codes);
      }
    }
  }
  QUANTD_ASSIGN_OR_RETURN(result.packed, EncodePacked(c));
  // The loss is measured on exactly what a reader of `packed` gets back.
  QUANTD_ASSIGN_OR_RETURN(MatrixF what, DequantizeMatrix(result.packed));
  // RelativeProxyLoss's arithmetic, keeping its denominator tr(W H Wᵀ) for the bit budget.
  {
    const MatrixD wd = w.cast<double>();
    const MatrixD d = what.cast<double>() - wd;
    result.weight_energy = (wd * h).cwiseProduct(wd).sum();
    result.proxy_loss =
        result.weight_energy == 0 ? 0 : (d * h).cwiseProduct(d).sum() / result.weight_energy;
  }
  result.rotated_proxy_loss = result.proxy_loss;
  result.stored_method = spec.method;
  if (spec.baseline_guard && c.rht) {
    QUANTD_ASSIGN_OR_RETURN(QuantizedMatrix baseline, QuantizeMatrix(dev, w, h, BaselineSpec(spec),
                                                                      layer_name));
    if (baseline.proxy_loss < result.proxy_loss) {
      AppendNote(&baseline.note,
                 absl::StrFormat("kept the unrotated gptq baseline: proxy loss %.6g < %s's %.6g",
                                 baseline.proxy_loss, std::string(MethodName(spec.method)),
                                 result.proxy_loss));
      baseline.rotated_proxy_loss = result.proxy_loss;
      return baseline;
    }
  }
  return result;
}

absl::StatusOr<MatrixF> DequantizeMatrix(std::string_view packed) {
  QUANTD_ASSIGN_OR_RETURN(PackedContents c, DecodePacked(packed));
  const Method method = static_cast<Method>(c.method);
  const int m = c.m, n = c.n, np = c.n_padded;
  if (method == Method::kRtn || method == Method::kGptq) {
    const int groups = NumGroups(n, c.group_size);
    const int gs = groups == 1 ? n : c.group_size;
    MatrixF out(m, n);
    for (int r = 0; r < m; ++r) {
      for (int col = 0; col < n; ++col) {
        out(r, col) = c.grids[static_cast<size_t>(r) * groups + col / gs].Dequant(
            c.codes[static_cast<size_t>(r) * n + col]);
      }
    }
    return out;
  }
  if (!c.rht) return absl::DataLossError("packed quip/quip-sharp/qtip matrix has no RHT signs");
  MatrixD wt(m, np);
  if (method == Method::kQtip) {
    QUANTD_ASSIGN_OR_RETURN(wt, DequantizeQtip(c));
  } else if (method == Method::kQuip || method == Method::kButterfly) {
    for (int64_t i = 0; i < wt.size(); ++i) wt.data()[i] = c.grids[0].Dequant(c.codes[i]);
    if (method == Method::kButterfly) {
      QUANTD_ASSIGN_OR_RETURN(Butterfly b, Butterfly::Make(np));
      if (b.angles().size() != c.angles.size()) {
        return absl::DataLossError(absl::StrCat("packed butterfly has ", c.angles.size(),
                                                " angles, n = ", np, " needs ", b.angles().size()));
      }
      b.mutable_angles().assign(c.angles.begin(), c.angles.end());
      b.InverseRows(&wt);
    }
  } else {
    QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<VectorCodebook> cb,
                            MakeCodebook(c.codebook, c.codebook_scale));
    const int g = cb->dim(), cpv = cb->codes_per_vector();
    if (g != c.vector_dim || cpv != c.codes_per_vector || g > 64) {
      return absl::DataLossError(absl::StrCat("packed codebook ", c.codebook, " layout ",
                                              c.vector_dim, "x", c.codes_per_vector,
                                              " does not match the built-in ", g, "x", cpv));
    }
    const int blocks = np / g;
    float xhat[64];
    for (int r = 0; r < m; ++r) {
      for (int b = 0; b < blocks; ++b) {
        cb->Decode(&c.codes[(static_cast<size_t>(r) * blocks + b) * cpv], xhat);
        for (int j = 0; j < g; ++j) {
          wt(r, b * g + j) = static_cast<double>(c.weight_scale) * static_cast<double>(xhat[j]);
        }
      }
    }
  }
  std::unique_ptr<Rht> out_rht, in_rht;
  QUANTD_RETURN_IF_ERROR(MakeRhts(m, np, c.seed, &out_rht, &in_rht));
  if (out_rht->signs() != c.signs_m || in_rht->signs() != c.signs_n) {
    return absl::DataLossError("packed RHT signs do not match the ones derived from the seed");
  }
  InverseRhtWeight(*out_rht, *in_rht, &wt);
  return MatrixF(wt.leftCols(n).cast<float>());
}

absl::StatusOr<PackedInfo> InspectPacked(std::string_view packed) {
  QUANTD_ASSIGN_OR_RETURN(PackedContents c, DecodePacked(packed));
  return PackedInfo{static_cast<Method>(c.method), c.bits, c.m, c.n, c.seed};
}

}  // namespace quantd::quant
