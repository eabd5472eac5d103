// Dense matrix types shared by every numerical library. Weights are row-major [out][in] like
// PyTorch Linear.weight; Hessians are fp64.
#ifndef QUANTD_COMMON_MATRIX_H_
#define QUANTD_COMMON_MATRIX_H_

// GCC 12 reports "'__Y' is used uninitialized" inside its own AVX-512 intrinsics headers when
// Eigen's packet code inlines them (GCC bug 105593; -march=native, see CMakeLists.txt). The
// intrinsics are first included here, so silencing the two warnings for this include covers
// them without hiding warnings in our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <Eigen/Dense>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace quantd {

using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using VectorF = Eigen::VectorXf;
using VectorD = Eigen::VectorXd;

}  // namespace quantd

#endif  // QUANTD_COMMON_MATRIX_H_
