// Dense matrix types shared by every numerical library. Weights are row-major [out][in] like
// PyTorch Linear.weight; Hessians are fp64.
#ifndef QUANTD_COMMON_MATRIX_H_
#define QUANTD_COMMON_MATRIX_H_

#include <Eigen/Dense>

namespace quantd {

using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using VectorF = Eigen::VectorXf;
using VectorD = Eigen::VectorXd;

}  // namespace quantd

#endif  // QUANTD_COMMON_MATRIX_H_
