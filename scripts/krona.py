"""ComfyUI-KronA as an Automatic1111 / Forge extension.

`<krona:name:weight>` is an alias of the built-in Lora network (A1111 ≥ 1.5 and Forge load
full-factor LoKr natively, so there is no second loader), models/krona is scanned besides the
Lora folder, a KronA page joins the extra-networks browser and a KronA tab trains, inspects and
converts files with krona_core.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # krona_core and krona_a1111 live at the extension's root

from modules import extra_networks, script_callbacks, scripts, ui_extra_networks  # noqa: E402

from krona_a1111 import api, tab  # noqa: E402
from krona_a1111.networks import rewrite_processing  # noqa: E402


class ExtraNetworkKronA(extra_networks.ExtraNetwork):
    """`krona` in the extra-network registry. Its tags are rewritten to the built-in Lora network's
    before the prompts are parsed, so the built-in one does the loading."""

    def __init__(self):
        super().__init__("krona")

    def activate(self, p, params_list):
        if params_list:
            print("[KronA] <krona:…> tags reached activation unrewritten; they are applied only when the "
                  "KronA script runs (it is always on unless disabled)", file=sys.stderr)

    def deactivate(self, p):
        pass


class KronAScript(scripts.Script):
    def title(self):
        return "KronA"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        rewrite_processing(p)


def _before_ui():
    from krona_a1111.page import ExtraNetworksPageKronA

    ui_extra_networks.register_page(ExtraNetworksPageKronA())
    extra_networks.register_extra_network(ExtraNetworkKronA())


script_callbacks.on_before_ui(_before_ui)
script_callbacks.on_ui_tabs(tab.on_ui_tabs)
script_callbacks.on_app_started(api.register)
