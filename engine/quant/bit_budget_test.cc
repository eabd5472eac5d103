#include "engine/quant/bit_budget.h"

#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "gtest/gtest.h"

namespace quantd::quant {
namespace {

// Brute force: the least summed loss over every combination with Σ bits·numel ≤ budget_bits
// (infinity when none fits).
double BruteForce(const std::vector<BudgetMatrix>& m, int64_t budget_bits) {
  double best = std::numeric_limits<double>::infinity();
  std::vector<size_t> idx(m.size(), 0);
  while (true) {
    int64_t cost = 0;
    double loss = 0;
    for (size_t i = 0; i < m.size(); ++i) {
      cost += int64_t{m[i].choices[idx[i]].bits} * m[i].numel;
      loss += m[i].choices[idx[i]].loss;
    }
    if (cost <= budget_bits) best = std::min(best, loss);
    size_t i = 0;
    while (i < m.size() && ++idx[i] == m[i].choices.size()) idx[i++] = 0;
    if (i == m.size()) return best;
  }
}

std::vector<BudgetMatrix> RandomInstance(std::mt19937_64& rng, bool large_numel) {
  std::uniform_int_distribution<int> count(1, 7), nchoices(1, 3);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<BudgetMatrix> m(count(rng));
  for (BudgetMatrix& b : m) {
    // Shapes like a model's (multiples of a common block) or arbitrary large sizes (gcd ~ 1).
    b.numel = large_numel ? std::uniform_int_distribution<int64_t>(1'000'000, 9'000'000)(rng)
                          : 64 * std::uniform_int_distribution<int64_t>(1, 24)(rng);
    const int k = nchoices(rng);
    for (int bits = 2; bits < 2 + k; ++bits) {
      // Mostly decreasing in bits like real proxy losses, sometimes not (the allocator must not
      // rely on it).
      const double loss = u(rng) < 0.8 ? std::exp(-1.4 * bits) * (0.5 + u(rng)) : u(rng);
      b.choices.push_back({bits, loss});
    }
  }
  return m;
}

TEST(BitBudgetTest, MatchesBruteForceOnSmallInstances) {
  std::mt19937_64 rng(7);
  int feasible = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<BudgetMatrix> m = RandomInstance(rng, /*large_numel=*/false);
    const double avg = std::uniform_real_distribution<double>(1.8, 4.2)(rng);
    int64_t total = 0;
    for (const auto& b : m) total += b.numel;
    const int64_t budget = static_cast<int64_t>(std::floor(avg * total));
    const double want = BruteForce(m, budget);
    auto got = AllocateBits(m, avg);
    if (std::isinf(want)) {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition) << trial;
      continue;
    }
    ++feasible;
    ASSERT_TRUE(got.ok()) << trial << ": " << got.status();
    EXPECT_NEAR(got->loss, want, 1e-12 * (1 + want)) << trial;
    EXPECT_LE(got->code_bits, budget) << trial;
    int64_t code_bits = 0;
    double loss = 0;
    for (size_t i = 0; i < m.size(); ++i) {
      EXPECT_EQ(got->bits[i], m[i].choices[got->choice[i]].bits);
      code_bits += int64_t{got->bits[i]} * m[i].numel;
      loss += m[i].choices[got->choice[i]].loss;
    }
    EXPECT_EQ(code_bits, got->code_bits);
    EXPECT_DOUBLE_EQ(loss, got->loss);
    EXPECT_DOUBLE_EQ(got->avg_bits, static_cast<double>(code_bits) / total);
  }
  EXPECT_GT(feasible, 1000);
}

// Sizes with gcd ~ 1 and budgets far above kMaxBudgetUnits bits: costs are rounded up to a
// coarser unit u. The result stays within the budget, and is at least as good as the optimum of
// a budget (n+1)·u smaller (every such solution survives the rounding).
TEST(BitBudgetTest, CoarseUnitsStayFeasibleAndNearOptimal) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<BudgetMatrix> m = RandomInstance(rng, /*large_numel=*/true);
    const double avg = std::uniform_real_distribution<double>(2.0, 4.0)(rng);
    int64_t total = 0, g = 0, narrow = 0;
    for (const auto& b : m) {
      total += b.numel;
      g = std::gcd(g, b.numel);
      narrow += 2 * b.numel;
    }
    const int64_t budget = static_cast<int64_t>(std::floor(avg * total));
    auto got = AllocateBits(m, avg);
    ASSERT_TRUE(got.ok()) << trial << ": " << got.status();
    EXPECT_LE(got->code_bits, budget) << trial;
    const int64_t extra = budget - narrow;
    const int64_t unit = g * ((extra / g + kMaxBudgetUnits - 1) / kMaxBudgetUnits);
    const int64_t slack = static_cast<int64_t>(m.size() + 1) * std::max<int64_t>(unit, 1);
    const double lower_budget_opt = BruteForce(m, budget - slack);
    EXPECT_LE(got->loss, lower_budget_opt + 1e-12) << trial;
    EXPECT_GE(got->loss, BruteForce(m, budget) - 1e-12) << trial;
  }
}

TEST(BitBudgetTest, TiesAreDeterministicAndUniformBudgetsAreExact) {
  // Equal losses everywhere: the earliest choice wins, whatever the budget.
  std::vector<BudgetMatrix> m(3, BudgetMatrix{100, {{2, 1.0}, {3, 1.0}, {4, 1.0}}});
  auto a = AllocateBits(m, 4.0);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->bits, std::vector<int>({2, 2, 2}));
  // Losses strictly decreasing in bits: a budget of exactly b gives uniform b.
  for (BudgetMatrix& b : m) b.choices = {{2, 0.3}, {3, 0.1}, {4, 0.02}};
  for (int bits : {2, 3, 4}) {
    auto u = AllocateBits(m, bits);
    ASSERT_TRUE(u.ok());
    EXPECT_EQ(u->bits, std::vector<int>(3, bits));
    EXPECT_DOUBLE_EQ(u->avg_bits, bits);
  }
}

TEST(BitBudgetTest, RefusesBadInputAndInfeasibleBudgets) {
  std::vector<BudgetMatrix> m = {{10, {{2, 0.5}, {4, 0.1}}}};
  EXPECT_EQ(AllocateBits({}, 3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateBits(m, NAN).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateBits(m, -1).status().code(), absl::StatusCode::kInvalidArgument);
  auto low = AllocateBits(m, 1.5);
  EXPECT_EQ(low.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(low.status().message().find("1.5"), std::string::npos) << low.status();
  m[0].choices[1].loss = -1;
  EXPECT_EQ(AllocateBits(m, 3).status().code(), absl::StatusCode::kInvalidArgument);
  m[0].choices.clear();
  EXPECT_EQ(AllocateBits(m, 3).status().code(), absl::StatusCode::kInvalidArgument);
  m = {{0, {{2, 0.5}}}};
  EXPECT_EQ(AllocateBits(m, 3).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::quant
