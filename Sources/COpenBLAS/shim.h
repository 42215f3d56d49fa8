#ifndef AUTORATE_COPENBLAS_SHIM_H
#define AUTORATE_COPENBLAS_SHIM_H
#include <cblas.h>
#endif
