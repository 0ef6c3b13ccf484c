"""Pictures of samples: image grids and their PNG files (Pillow), 2-D scatter plots
(matplotlib). Both libraries are imported when a picture is made, not with the
package."""

from ._pictures import (
    image_grid as image_grid,
    save_image as save_image,
    save_scatter as save_scatter,
)
