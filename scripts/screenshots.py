"""Screenshots of EV_Front, Central's web page (docs/front.md): ``docs/front.png`` (a desktop
browser, the whole page) and ``docs/front-phone.png`` (a phone, 390x844).

    .venv/bin/python scripts/screenshots.py [--out docs] [--keep]

It runs a small real system on this machine, as the browser tests do: a Tansu broker on
127.0.0.1, Central (SQLite in a temporary folder) with its API on 127.0.0.1, ten CPs (Engine +
Monitor processes) named after the panel of the assignment, three drivers' supplies, EV_W with
a simulated temperature file, then an operator's Stop, an Engine fault and a Monitor gone, so
that the page shows every state. It waits for each on the page itself (Playwright driving
Debian's Chromium at /usr/bin/chromium), then takes the pictures. About a minute.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.front.frontsys import DESKTOP, OPERATOR_TOKEN, PHONE, FrontSystem, chromium_problem, launch_chromium  # noqa: E402
from tests.support.processes import ProgramRunner  # noqa: E402
from tests.support.services import TansuBroker  # noqa: E402

#: (CP id, location, price, city): the CPs of the assignment's panel (its Figure 1).
CPS = [
    ("ALC1", "C/Italia 5", "0.54", "Alicante,ES"),
    ("ALC3", "Gran Vía 2", "0.54", "Alicante,ES"),
    ("MAD2", "C/Serrano 18", "0.60", "Madrid,ES"),
    ("MAD3", "C/Pez 23", "0.48", "Madrid,ES"),
    ("MAD1", "C/Argüelles", "0.40", "Madrid,ES"),
    ("SEV3", "C/Sevilla 4", "0.54", "Sevilla,ES"),
    ("SEV2", "Maestranza", "0.40", "Sevilla,ES"),
    ("VAL3", "Museo Arte", "0.50", "Valencia,ES"),
    ("VAL1", "San Javier", "0.48", "Teruel,ES"),
    ("COR1", "Mezquita", "0.40", "Cordoba,ES"),
]
TEMPERATURES = {"Alicante,ES": 17.5, "Madrid,ES": 9, "Sevilla,ES": 21, "Valencia,ES": 16, "Teruel,ES": -2.5,
                "Cordoba,ES": 19}
LONG = ("--auto", "--auto-seconds", "600")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder of front.png and front-phone.png")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (the programs' logs)")
    args = parser.parse_args(argv)
    problem = chromium_problem()
    if problem:
        print(f"screenshots: {problem}", file=sys.stderr)
        return 2
    from playwright.sync_api import expect, sync_playwright

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="ev-front-shots-"))
    broker = TansuBroker(log_path=folder / "tansu.log").start()
    runner = ProgramRunner(folder)
    front = FrontSystem(runner, broker.bootstrap, f"sqlite:///{folder / 'central.db'}", "shots-",
                        drivers=("D005", "D023", "D234", "D007"))
    try:
        front.start_central()
        print(f"screenshots: Central's page at {front.url} (logs in {folder})")
        for cp_id, location, price, _city in CPS:
            quick = cp_id == "SEV2"
            front.start_cp(cp_id, *(("--auto", "--auto-seconds", "3") if quick else LONG), location=location,
                           price=price)
        front.start_ev_w({cp: city for cp, _, _, city in CPS}, TEMPERATURES)
        # a finished supply (a ticket), then three in course
        front.start_driver("D007", "--cp", "SEV2").wait_exit(60)
        for driver, cp_id in (("D005", "MAD2"), ("D023", "SEV3"), ("D234", "COR1")):
            front.start_driver(driver, "--cp", cp_id)
        front.fault("MAD3")
        front.system.cps["MAD1"].monitor.kill()
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport=DESKTOP)
            page.goto(front.url)
            tile = lambda cp_id: page.locator(f'[data-cp-id="{cp_id}"].tile')  # noqa: E731
            page.fill("#token", OPERATOR_TOKEN)
            page.click("#token-use")
            tile("ALC3").get_by_role("button", name="Stop ALC3").click()
            wanted = {"ALC1": "ACTIVADO", "ALC3": "PARADO", "MAD2": "SUMINISTRANDO", "MAD3": "AVERIADO",
                      "MAD1": "DESCONECTADO", "SEV3": "SUMINISTRANDO", "SEV2": "ACTIVADO", "VAL3": "ACTIVADO",
                      "VAL1": "PARADO", "COR1": "SUMINISTRANDO"}
            for cp_id, state in wanted.items():
                expect(tile(cp_id)).to_have_attribute("data-state", state, timeout=60_000)
            expect(page.locator("#weather tbody tr")).to_have_count(len(TEMPERATURES), timeout=30_000)
            expect(page.locator("#tickets tbody tr").first).to_be_visible(timeout=30_000)
            page.wait_for_function(  # a few seconds of supply: kWh on the tiles
                "(selector) => parseFloat(document.querySelector(selector).textContent) > 0.5",
                arg='[data-cp-id="MAD2"].tile .kwh', timeout=30_000)
            page.evaluate("() => { document.getElementById('command-result').textContent = ''; }")
            page.screenshot(path=str(out / "front.png"), full_page=True)
            phone = browser.new_page(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
            phone.goto(front.url)
            expect(phone.locator(".tile")).to_have_count(len(CPS), timeout=20_000)
            expect(phone.locator('[data-cp-id="MAD2"].tile .kwh')).not_to_have_text("", timeout=20_000)
            phone.screenshot(path=str(out / "front-phone.png"))
            browser.close()
        print(f"screenshots: wrote {out / 'front.png'} and {out / 'front-phone.png'}")
    finally:
        front.close()
        broker.stop(timeout=3.0)
        if not args.keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"screenshots: logs kept in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
