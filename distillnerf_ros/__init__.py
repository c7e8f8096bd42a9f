"""ROS 2 adapter for distillnerf_core: message conversion, TF, camera sync, nodes.

The generated service types (distillnerf_ros.srv) are installed by CMake into site-packages; extending the
package path lets them be found even when this source tree comes first on sys.path (pytest, python -m).
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
