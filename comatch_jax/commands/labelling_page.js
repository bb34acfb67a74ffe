'use strict';
// The labelling page's logic. Data comes from the JSON block above (never parsed as HTML);
// every name reaches the page through textContent, never innerHTML.
const DATA = JSON.parse(document.getElementById('requests').textContent);
const REQUESTS = DATA.requests; // [key, image file, request score, [class indices], [probabilities]]
const NAMES = DATA.class_names;
const UNKNOWN = DATA.unknown_label;
// One localStorage entry per answer, "cj <storage key> <request index>" -> label, so that an
// answer costs one small write however many are kept.
const STORE = 'cj ' + DATA.storage_key + ' ';
const $ = (id) => document.getElementById(id);
const search = $('search');
const number = (n) => n.toLocaleString('en-US');

const answers = new Array(REQUESTS.length); // request index -> class name, UNKNOWN or undefined
for (let i = 0; i < localStorage.length; i++) {
  const name = localStorage.key(i);
  const index = Number(name.slice(STORE.length));
  if (name.startsWith(STORE) && Number.isInteger(index) && index >= 0 && index < REQUESTS.length) {
    answers[index] = localStorage.getItem(name);
  }
}
let answered = answers.filter((label) => label !== undefined).length;
const undoStack = []; // [request index, previous answer or undefined]
let current = Math.max(0, answers.findIndex((label) => label === undefined));
let matches = [];
let active = 0;

function setAnswer(index, label) {
  answered += (label !== undefined) - (answers[index] !== undefined);
  answers[index] = label;
  try {
    if (label === undefined) localStorage.removeItem(STORE + index);
    else localStorage.setItem(STORE + index, label);
  } catch (e) {
    $('status').textContent = 'Could not keep the answers in this browser (' + e.name +
      '): download them now.';
  }
}

function answer(label) {
  undoStack.push([current, answers[current]]);
  setAnswer(current, label);
  leaveSearch();
  $('status').textContent = '';
  go(Math.min(current + 1, REQUESTS.length - 1));
}

function undo() {
  const last = undoStack.pop();
  if (!last) { $('status').textContent = 'Nothing to undo.'; return; }
  setAnswer(last[0], last[1]);
  $('status').textContent = 'Undone: answer for image ' + number(last[0] + 1) + '.';
  go(last[0]);
}

function shown(label) {
  return label === UNKNOWN ? 'none of these / unknown' : label;
}

function pixelate() { // below 32 px (e.g. 28x28 digits) smooth upscaling blurs to a blob
  this.classList.toggle('pixelated', this.naturalWidth < 32);
}

function fit() { // a small image (e.g. a 32x32 photo) at a whole multiple of its size up to
  // 160 px: larger it only gets more blurred or more blocky, and harder to tell
  const scale = Math.floor(160 / Math.max(this.naturalWidth, this.naturalHeight));
  this.style.width = scale >= 1 ? this.naturalWidth * scale + 'px' : '';
  this.style.height = scale >= 1 ? this.naturalHeight * scale + 'px' : '';
  pixelate.call(this);
}

function imageElement(file) {
  const img = document.createElement('img');
  img.onload = pixelate;
  img.src = DATA.image_dir + '/' + file;
  img.alt = '';
  return img;
}

function go(index) {
  current = Math.max(0, Math.min(index, REQUESTS.length - 1));
  render();
}

function render() {
  const [key, file, score, classes, probs] = REQUESTS[current];
  const label = answers[current];
  $('image').src = DATA.image_dir + '/' + file;
  $('position').textContent = 'Image ' + number(current + 1) + ' of ' + number(REQUESTS.length);
  $('key').textContent = key;
  $('score').textContent = 'request score ' + score;
  $('current').textContent = label === undefined ? 'Not answered yet' : 'Answer: ' + shown(label);
  $('current').className = label === undefined ? '' : 'answered';
  $('progress').textContent = number(answered) + ' of ' + number(REQUESTS.length) + ' labelled';
  $('bar').firstElementChild.style.width = (100 * answered / REQUESTS.length) + '%';
  const list = $('guesses');
  list.replaceChildren();
  classes.forEach((c, i) => {
    const button = document.createElement('button');
    const kbd = document.createElement('kbd');
    const name = document.createElement('span');
    const prob = document.createElement('span');
    kbd.textContent = String(i + 1);
    name.className = 'name';
    name.textContent = NAMES[c];
    prob.className = 'prob';
    prob.textContent = (100 * probs[i]).toFixed(1) + '%';
    button.append(kbd, name, prob);
    button.classList.toggle('chosen', label === NAMES[c]);
    button.onclick = () => answer(NAMES[c]);
    const item = document.createElement('li');
    item.append(button);
    list.append(item);
  });
  $('unknown').classList.toggle('chosen', label === UNKNOWN);
  renderStrip();
  for (let i = current + 1; i <= current + 3 && i < REQUESTS.length; i++) {
    new Image().src = DATA.image_dir + '/' + REQUESTS[i][1]; // warm the cache for paging
  }
}

function renderStrip() {
  const strip = $('strip');
  const count = Math.max(1, Math.floor((strip.clientWidth + 8) / 92));
  const first = Math.max(0, Math.min(current - Math.floor(count / 2), REQUESTS.length - count));
  strip.replaceChildren();
  for (let i = first; i < Math.min(first + count, REQUESTS.length); i++) {
    const figure = document.createElement('figure');
    const caption = document.createElement('figcaption');
    const label = answers[i];
    caption.textContent = label === undefined ? number(i + 1) : shown(label);
    caption.className = label === undefined ? '' : 'answered';
    figure.append(imageElement(REQUESTS[i][1]), caption);
    figure.className = i === current ? 'here' : '';
    figure.onclick = () => go(i);
    strip.append(figure);
  }
}

function findMatches() {
  const query = search.value.trim().toLowerCase();
  matches = [];
  if (query) {
    const starts = [];
    const contains = [];
    NAMES.forEach((name, c) => {
      const at = name.toLowerCase().indexOf(query);
      if (at === 0) starts.push(c); else if (at > 0) contains.push(c);
    });
    matches = starts.concat(contains).slice(0, 12);
  }
  active = 0;
  renderMatches();
}

function renderMatches() {
  const list = $('matches');
  list.replaceChildren();
  matches.forEach((c, i) => {
    const item = document.createElement('li');
    item.textContent = NAMES[c];
    item.className = i === active ? 'active' : '';
    item.onmousedown = (event) => { event.preventDefault(); answer(NAMES[c]); };
    list.append(item);
  });
  if (search.value.trim() && !matches.length) {
    const item = document.createElement('li');
    item.textContent = 'No class matches.';
    list.append(item);
  }
}

function leaveSearch() {
  search.value = '';
  findMatches();
  search.blur();
}

function csvField(text) {
  text = String(text);
  return /[",\r\n]|^\s|\s$/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}

function download() {
  const rows = [DATA.key_column + ',label'];
  REQUESTS.forEach((r, i) => {
    if (answers[i] !== undefined) rows.push(csvField(r[0]) + ',' + csvField(answers[i]));
  });
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([rows.join('\r\n') + '\r\n'], { type: 'text/csv' }));
  link.download = DATA.csv_name;
  document.body.append(link);
  link.click();
  link.remove();
  $('status').textContent = 'Downloaded ' + number(rows.length - 1) + ' answers as ' +
    DATA.csv_name + '.';
}

document.addEventListener('keydown', (event) => {
  const inSearch = document.activeElement === search;
  const typing = inSearch && search.value !== '';
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === 'z' && !typing) {
    event.preventDefault();
    undo();
  } else if (event.ctrlKey || event.metaKey || event.altKey) {
    return;
  } else if (typing && (event.key === 'ArrowDown' || event.key === 'ArrowUp')) {
    event.preventDefault();
    active = (active + (event.key === 'ArrowDown' ? 1 : -1) + matches.length) %
      Math.max(1, matches.length);
    renderMatches();
  } else if (typing && event.key === 'Enter') {
    event.preventDefault();
    if (matches.length) answer(NAMES[matches[active]]);
  } else if (event.key === 'Escape') {
    leaveSearch();
  } else if (typing) {
    return; // the search box takes the key
  } else if (/^[1-9]$/.test(event.key)) {
    event.preventDefault();
    const classes = REQUESTS[current][3];
    const i = Number(event.key) - 1;
    if (i < classes.length) answer(NAMES[classes[i]]);
  } else if (event.key === '0') {
    event.preventDefault();
    answer(UNKNOWN);
  } else if (event.key === 'ArrowRight' || event.key === 'PageDown') {
    event.preventDefault();
    go(current + 1);
  } else if (event.key === 'ArrowLeft' || event.key === 'PageUp') {
    event.preventDefault();
    go(current - 1);
  } else if (event.key === 'Backspace' && !inSearch) {
    event.preventDefault();
    undo();
  } else if (event.key.length === 1 && event.key !== ' ' && !inSearch) {
    search.focus(); // the key's character goes into the search box
  }
});

search.addEventListener('input', findMatches);
$('unknown').onclick = () => answer(UNKNOWN);
$('download').onclick = download;
window.addEventListener('resize', renderStrip);
document.title = DATA.title;
$('title').textContent = DATA.title;
search.placeholder = 'Type to search all ' + number(NAMES.length) + ' classes';
$('image').onload = fit;
go(current);
