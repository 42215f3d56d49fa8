#ifndef AUTORATE_CPNG_SHIM_H
#define AUTORATE_CPNG_SHIM_H
// libpng's simplified API (png_image_*): no setjmp, errors in png_image.message.
#include <png.h>
#endif
