#ifndef AUTORATE_CZLIB_SHIM_H
#define AUTORATE_CZLIB_SHIM_H
#include <zlib.h>
#endif
