// The 3D selfie page: a photo from a file, a drop, a paste or the camera -> POST /api/reconstruct ->
// the faces found drawn on the photo, each face's mesh in <model-viewer>, and its downloads.
// document.body.dataset.state is loading | ready | working | done | error | nomodel (tests wait on it).
import './vendor/model-viewer.min.js';

const $ = (id) => document.getElementById(id);
const state = (s) => { document.body.dataset.state = s; };
let busy = false;
let stream = null;

function showMessage(text) {
  $('message').textContent = text;
  $('message').hidden = !text;
}

async function loadStatus() {
  try {
    const r = await fetch('/api/status');
    const s = await r.json();
    if (!s.ready) {
      $('model').textContent = '';
      showMessage(s.message);
      $('input').classList.add('disabled');
      state('nomodel');
      return;
    }
    $('model').textContent = `Model: ${s.model}. Photos up to ${s.max_upload_mb} MB and ` +
        `${s.max_megapixels} megapixels.`;
    state('ready');
  } catch (e) {
    showMessage(`The server does not answer (${e}). Is python run_demo.py still running?`);
    state('error');
  }
}

function drawPhoto(bitmap, faces, selected) {
  const canvas = $('photo');
  if (!bitmap) { canvas.hidden = true; return; }
  canvas.hidden = false;
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const g = canvas.getContext('2d');
  g.drawImage(bitmap, 0, 0);
  const line = Math.max(2, Math.round(Math.max(bitmap.width, bitmap.height) / 300));
  faces.forEach((f, i) => {
    const [x0, y0, x1, y1] = f.box;
    g.lineWidth = line;
    g.strokeStyle = i === selected ? '#22c55e' : '#f59e0b';
    g.strokeRect(x0, y0, x1 - x0, y1 - y0);
    g.fillStyle = g.strokeStyle;
    g.font = `${Math.max(14, 8 * line)}px sans-serif`;
    g.fillText(String(i + 1), x0 + line, Math.max(y0 - 2 * line, 8 * line + 4));
    g.fillStyle = 'rgba(255,255,255,0.8)';
    for (const [x, y] of f.landmarks || []) { g.fillRect(x - line / 2, y - line / 2, line, line); }
  });
}

function showFace(result, bitmap, k) {
  const face = result.faces[k];
  drawPhoto(bitmap, result.faces, k);
  $('faces').querySelectorAll('button').forEach((b, i) => b.setAttribute('aria-pressed', String(i === k)));
  for (const fmt of ['glb', 'ply', 'obj']) {
    $(`dl-${fmt}`).href = face.files[fmt];
    $(`dl-${fmt}`).setAttribute('download', `${face.name}.${fmt}`);
  }
  const viewer = $('viewer');
  viewer.addEventListener('load', () => state('done'), { once: true });
  viewer.addEventListener('error', () => {
    showMessage('The viewer could not show this mesh; the downloads still work.');
    state('error');
  }, { once: true });
  viewer.src = face.files.glb;
}

async function reconstruct(blob, name) {
  if (busy || document.body.dataset.state === 'nomodel') return;
  busy = true;
  showMessage('');
  $('working').hidden = false;
  state('working');
  let bitmap = null;
  try {
    bitmap = await createImageBitmap(blob);
  } catch (e) {
    bitmap = null; // the server says what is wrong with it
  }
  try {
    const r = await fetch(`/api/reconstruct?name=${encodeURIComponent(name || 'photo')}`, {
      method: 'POST', body: blob, headers: { 'Content-Type': blob.type || 'application/octet-stream' },
    });
    const body = await r.json().catch(() => ({ error: `The server answered ${r.status}.` }));
    if (!r.ok) {
      $('result').hidden = true;
      showMessage(body.error || `The server answered ${r.status}.`);
      state('error');
      return;
    }
    const t = body.timing_ms;
    $('timing').textContent = `${body.faces.length} face(s) from a ${body.width}x${body.height} photo in ` +
        `${Math.round(Object.values(t).reduce((a, b) => a + b, 0))} ms (` +
        Object.entries(t).map(([k, v]) => `${k} ${Math.round(v)}`).join(', ') + ' ms).';
    const list = $('faces');
    list.textContent = body.faces.length > 1 ? 'Show face: ' : '';
    if (body.faces.length > 1) {
      body.faces.forEach((f, i) => {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'button';
        b.textContent = String(i + 1);
        b.addEventListener('click', () => showFace(body, bitmap, i));
        list.appendChild(b);
      });
    }
    $('result').hidden = false;
    showFace(body, bitmap, 0);
  } catch (e) {
    showMessage(`The upload failed (${e}).`);
    state('error');
  } finally {
    busy = false;
    $('working').hidden = true;
  }
}

function setUpInputs() {
  const drop = $('drop');
  $('file').addEventListener('change', (e) => {
    const f = e.target.files[0];
    if (f) reconstruct(f, f.name);
    e.target.value = '';
  });
  drop.addEventListener('click', (e) => { if (e.target === drop) $('file').click(); });
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') $('file').click(); });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const f = e.dataTransfer.files[0];
    if (f) reconstruct(f, f.name);
  });
  document.addEventListener('paste', (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith('image/'));
    if (item) reconstruct(item.getAsFile(), 'pasted');
  });

  $('camera-start').addEventListener('click', async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (e) {
      showMessage(`No camera (${e.name}: ${e.message}). Choose a photo instead.`);
      return;
    }
    $('video').srcObject = stream;
    $('camera').hidden = false;
    drop.hidden = true;
    state('camera');
  });
  const stopCamera = () => {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    $('camera').hidden = true;
    drop.hidden = false;
  };
  $('camera-stop').addEventListener('click', () => { stopCamera(); state('ready'); });
  $('camera-shoot').addEventListener('click', () => {
    const video = $('video');
    if (!video.videoWidth) { showMessage('The camera has not sent a picture yet; try again.'); return; }
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext('2d').drawImage(video, 0, 0);
    stopCamera();
    canvas.toBlob((blob) => reconstruct(blob, 'camera'), 'image/jpeg', 0.92);
  });
}

setUpInputs();
loadStatus();
