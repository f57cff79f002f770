// Opens a study in OHIF with headless Chromium, lists its study panel, and screenshots the cine
// before and after loading a SEG series on it, both on the same frame: the viewer proof.
//
//   node screenshot.mjs VIEWER_URL STUDY_UID OUT_DIR --seg-series N [--frame F]
//
// VIEWER_URL is the nginx of start.sh (http://127.0.0.1:PORT); N is the SeriesNumber of the SEG
// series to load (the first such thumbnail); F the 1-based cine frame to show (default 1; pick
// one the SEG covers), or `seg`: frame 1 without the SEG, and with it the frame OHIF shows on
// loading it (its first segmented frame; frame_with_seg in the report). Writes
// OUT_DIR/without-seg.png and OUT_DIR/with-seg.png and prints one JSON object on stdout:
//   series       the study panel: [{modality, description, series_number}] as OHIF lists them
//   frame        the frame shown in both screenshots; frames: the cine's frame count
//   frame_with_seg  the frame shown with the SEG (frame, unless --frame seg)
//   image_to_page  where image pixel (column, row) is in the screenshot without the SEG:
//                  page x = x0 + column * sx, page y = y0 + row * sy
//   image_to_page_with_seg  the same in the screenshot with it (null when it did not load)
//   seg          {loaded, segmentations, error}: whether OHIF loaded the SEG onto the viewport
//   notifications  texts of OHIF's pop-up notifications, hidden in the screenshots (they would
//                  cover part of the image)
//   console      errors and warnings the page logged (for a person reading a failure)
// When the SEG does not load, with-seg.png shows what OHIF shows instead and the exit status is
// still 0; it is 1, with a message on stderr, when OHIF does not show the cine at all.
// CHROMIUM overrides the browser executable (default /usr/bin/chromium, Debian's package).
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const usage = 'usage: node screenshot.mjs VIEWER_URL STUDY_UID OUT_DIR --seg-series N [--frame F]';
const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: { 'seg-series': { type: 'string' }, frame: { type: 'string', default: '1' } },
});
if (positionals.length !== 3 || !options['seg-series']) {
  console.error(usage);
  process.exit(2);
}
const [viewerUrl, studyUid, outDir] = positionals;
const segSeries = options['seg-series'];
const stayOnSeg = options.frame === 'seg';
const frame = stayOnSeg ? 1 : Number(options.frame);
if (!Number.isInteger(frame) || frame < 1) {
  console.error(`screenshot.mjs: --frame must be a frame number from 1, not '${options.frame}'`);
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const LOAD_TIMEOUT_MS = 45_000;
const SEG_TIMEOUT_MS = 30_000;

mkdirSync(outDir, { recursive: true });
const logged = [];
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
  const result = await run(browser);
  process.stdout.write(JSON.stringify(result, null, 2) + '\n');
} catch (error) {
  console.error(`screenshot.mjs: ${error.message}`);
  if (logged.length) console.error(`page console:\n${logged.join('\n')}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}

async function run(browser) {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    deviceScaleFactor: 1,
  });
  // A fresh profile would start OHIF's guided tour, whose pop-up covers the viewport.
  await context.addInitScript(() =>
    localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])),
  );
  const page = await context.newPage();
  page.on('console', (message) => {
    if (['error', 'warning'].includes(message.type())) {
      logged.push(`${message.type()}: ${message.text().slice(0, 500)}`);
    }
  });
  page.on('pageerror', (error) => logged.push(`pageerror: ${error.message}`));

  const url = `${viewerUrl}/viewer?StudyInstanceUIDs=${encodeURIComponent(studyUid)}`;
  await page.goto(url);
  await page
    .waitForFunction(
      () => {
        const element = window.cornerstone?.getEnabledElements?.()[0];
        const viewport = element?.viewport;
        return Boolean(viewport?.getImageIds?.().length && viewport.getImageData?.());
      },
      null,
      { timeout: LOAD_TIMEOUT_MS, polling: 250 },
    )
    .catch(() => {
      throw new Error(`OHIF did not display an image of ${url} within ${LOAD_TIMEOUT_MS} ms`);
    });
  // The study panel fills in as the series' metadata arrive.
  await page.locator('[data-series]').first().waitFor({ timeout: LOAD_TIMEOUT_MS });
  await page.waitForLoadState('networkidle');

  const series = await page.$$eval('[data-series]', (thumbnails) =>
    thumbnails.map((thumbnail) => ({
      modality: thumbnail.querySelector('[data-cy="series-modality-label"]')?.textContent.trim(),
      description: thumbnail
        .querySelector('[data-cy="series-description-label"]')
        ?.textContent.trim(),
      series_number: Number(thumbnail.dataset.series),
    })),
  );

  const frames = await showFrame(page, frame);
  const notifications = [];
  const withoutPath = join(outDir, 'without-seg.png');
  await screenshot(page, withoutPath, notifications);
  const imageToPage = await page.evaluate(mapImageToPage);

  const seg = await loadSeg(page, segSeries);
  let imageToPageAfter = null;
  if (seg.loaded && !stayOnSeg) {
    // Loading a SEG jumps to its first segmented frame; come back to the frame shot without it.
    await showFrame(page, frame);
  }
  const frameWithSeg = await page.evaluate(() => {
    const index = window.cornerstone?.getEnabledElements?.()[0]?.viewport?.getCurrentImageIdIndex?.();
    return index === undefined ? null : index + 1;
  });
  // When the SEG failed, the shot shows what OHIF shows instead, its error notification too.
  if (!seg.loaded) await page.waitForTimeout(1500); // the notification's slide-in
  const withPath = join(outDir, 'with-seg.png');
  await screenshot(page, withPath, notifications, { hideNotifications: seg.loaded });
  if (seg.loaded) imageToPageAfter = await page.evaluate(mapImageToPage);

  return {
    url,
    series,
    frame,
    frame_with_seg: frameWithSeg,
    frames,
    image_to_page: imageToPage,
    image_to_page_with_seg: imageToPageAfter,
    seg,
    notifications,
    screenshots: { without: withoutPath, with: withPath },
    console: logged,
  };
}

/** Screenshot the page without mouse hover effects and, unless told otherwise, without OHIF's
 * pop-up notifications; their texts are added to `notifications`. */
async function screenshot(page, path, notifications, { hideNotifications = true } = {}) {
  // Off the viewport and the toolbar (whose buttons move when a SEG adds its tools): the empty
  // foot of the study list, where hovering shows nothing. Tooltips still open are hidden.
  const { height } = page.viewportSize() ?? { height: 800 };
  await page.mouse.move(2, height - 2);
  const texts = await page.$$eval('[data-sonner-toast]', (toasts) =>
    toasts.map((toast) => toast.textContent.trim()),
  );
  notifications.push(...texts.filter((text) => !notifications.includes(text)));
  const style = hideNotifications
    ? await page.addStyleTag({ content: '[data-sonner-toaster] { display: none !important; }' })
    : null;
  const tooltips = await page.addStyleTag({
    content: '[role="tooltip"], [data-radix-popper-content-wrapper] { display: none !important; }',
  });
  await page.screenshot({ path });
  await style?.evaluate((element) => element.remove());
  await tooltips.evaluate((element) => element.remove());
}

/** Show 1-based `frame` of the cine in the (only) viewport and wait until it is drawn. */
async function showFrame(page, frame) {
  const frames = await page.evaluate(async (index) => {
    const { viewport } = window.cornerstone.getEnabledElements()[0];
    // A playing cine would move on between the two screenshots.
    window.services?.cineService?.stopClip?.(viewport.element, { viewportId: viewport.id });
    const count = viewport.getImageIds().length;
    if (index >= count) return count;
    await viewport.setImageIdIndex(index);
    viewport.render();
    return count;
  }, frame - 1);
  if (frame > frames) throw new Error(`the cine has ${frames} frames; no frame ${frame}`);
  await page.waitForFunction(
    (index) => {
      const { viewport } = window.cornerstone.getEnabledElements()[0];
      return viewport.getCurrentImageIdIndex() === index && viewport.getImageData?.();
    },
    frame - 1,
    { timeout: LOAD_TIMEOUT_MS },
  );
  await page.waitForTimeout(1000); // let the render loop draw the frame (and any overlay)
  return frames;
}

/** Page coordinates of image pixels: x = x0 + column * sx, y = y0 + row * sy. */
function mapImageToPage() {
  const { viewport } = window.cornerstone.getEnabledElements()[0];
  const { imageData } = viewport.getImageData();
  const canvas = viewport.canvas.getBoundingClientRect();
  const toPage = (column, row) => {
    const [x, y] = viewport.worldToCanvas(imageData.indexToWorld([column, row, 0]));
    return [canvas.left + x, canvas.top + y];
  };
  const [x0, y0] = toPage(0, 0);
  const [x1] = toPage(100, 0);
  const [, y1] = toPage(0, 100);
  return { x0, y0, sx: (x1 - x0) / 100, sy: (y1 - y0) / 100 };
}

/** Double-click the SEG's thumbnail, accept OHIF's "open this Segmentation?" prompt and wait
 * until the segmentation is on the viewport (or OHIF reports why not). */
async function loadSeg(page, seriesNumber) {
  const thumbnail = page.locator(`[data-series="${seriesNumber}"]`);
  if ((await thumbnail.count()) === 0) {
    return { loaded: false, segmentations: 0, error: `no series ${seriesNumber} in the panel` };
  }
  const errorsBefore = logged.length;
  await thumbnail.first().dblclick();
  const yes = page.getByRole('button', { name: 'Yes', exact: true });
  const deadline = Date.now() + SEG_TIMEOUT_MS;
  let accepted = false;
  while (Date.now() < deadline) {
    if (!accepted && (await yes.isVisible().catch(() => false))) {
      await yes.click();
      accepted = true;
    }
    const state = await page.evaluate(segState);
    if (accepted && state.onViewport > 0) {
      await page.waitForLoadState('networkidle');
      await page.waitForTimeout(1000);
      return { loaded: true, segmentations: state.segmentations, error: null };
    }
    const failure = logged
      .slice(errorsBefore)
      .find((line) => /error/i.test(line) && /seg|segment|displaySet|TypeError/i.test(line));
    if (failure) return { loaded: false, segmentations: state.segmentations, error: failure };
    await page.waitForTimeout(250);
  }
  const state = await page.evaluate(segState);
  const error = accepted
    ? `the segmentation was not on the viewport within ${SEG_TIMEOUT_MS} ms`
    : `OHIF did not ask to open the SEG within ${SEG_TIMEOUT_MS} ms`;
  return { loaded: false, segmentations: state.segmentations, error };
}

function segState() {
  const service = window.services.segmentationService;
  // Between the double-click and the SEG viewport's start there is no viewport for a moment.
  const viewport = window.cornerstone.getEnabledElements()[0]?.viewport;
  return {
    segmentations: service.getSegmentations().length,
    onViewport: viewport ? service.getSegmentationRepresentations(viewport.id).length : 0,
  };
}
