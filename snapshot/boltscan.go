package snapshot

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
)

// etcd's snapshot stream carries no revision, so the revision a snapshot contains is read
// from the bbolt pages as they stream past, the way `etcdutl snapshot status` reads it from a
// file: the highest main revision in the "key" bucket, together with meta's finishedCompactRev
// and scheduledCompactRev, as etcd's own mvcc restore combines them.
//
// A streamed file cannot be walked as a tree, because a page may be referenced by a page that
// comes after it. So every page is summarised while it passes (a few bytes each: a branch
// page's last child, a leaf page's last revision key, the root bucket's entries) and the tree
// is walked over the summaries at the end, from meta page 0 (the one bbolt's Tx.WriteTo writes
// for the snapshot's own transaction). Free pages still hold stale data and stale page headers,
// and a stale overflow header may claim pages that were reused since; so every page-aligned
// offset whose header names its own page id is parsed, even inside another page's overflow,
// and only the pages the live tree reaches count.

const (
	pageHeaderSize = 16
	elemSize       = 16 // both leaf and branch element headers

	branchPageFlag = 0x01
	leafPageFlag   = 0x02
	metaPageFlag   = 0x04
	bucketLeafFlag = 0x01

	boltMagic   = 0xED0CDAED
	boltVersion = 2

	// etcd revision keys: 8-byte big-endian main revision, '_', 8-byte sub revision,
	// and a trailing 't' on tombstones.
	revKeyLen       = 17
	markedRevKeyLen = 18

	// Bounds on what one page summary may capture, so a corrupt page cannot make the
	// scanner allocate without limit.
	maxCaptureHeader = 1 << 20
	maxCaptureValue  = 1 << 16
)

var (
	keyBucketName       = []byte("key")
	metaBucketName      = []byte("meta")
	finishedCompactKey  = []byte("finishedCompactRev")
	scheduledCompactKey = []byte("scheduledCompactRev")
)

// bucketRef is where a bucket's tree starts: a root page, or an inline leaf page.
type bucketRef struct {
	root   uint64
	inline []byte // set when root == 0
	found  bool
}

type leafRev struct {
	pgid uint64
	rev  int64
}

// capture is a byte range of the current page that a summary needs.
type capture struct {
	off  int64 // relative to the page start
	buf  []byte
	fill int
}

func (c *capture) done() bool { return c.fill == len(c.buf) }

// pageParse collects what is needed from one page while its bytes stream past.
type pageParse struct {
	id       uint64
	start    int64 // absolute offset
	span     int64
	hdr      capture // page header and element headers
	items    []*capture
	itemsSet bool
}

// boltScanner is an io.Writer that summarises a bbolt file streaming through it.
type boltScanner struct {
	pos      int64
	pageSize int64
	first    []byte // page 0 (meta) until it is complete
	meta     struct {
		root  uint64
		pgid  uint64
		valid bool
	}
	hdrBuf []byte // a page header straddling two writes
	active []*pageParse
	err    error

	branchLast map[uint64]uint64 // branch page → last child
	leaves     []leafRev         // leaf page → its last revision key, in the order pages completed
	compactAt  map[uint64]int64  // leaf page → the compaction revision found in it (see isCompactKey)
	buckets    map[uint64][2]bucketRef
}

func newBoltScanner() *boltScanner {
	return &boltScanner{
		branchLast: map[uint64]uint64{},
		compactAt:  map[uint64]int64{},
		buckets:    map[uint64][2]bucketRef{},
	}
}

// Write never fails: a malformed file is reported by result, so that the stream (and the
// checksum that decides whether the file is corrupt) is always read to the end.
func (s *boltScanner) Write(p []byte) (int, error) {
	n := len(p)
	if s.err != nil {
		s.pos += int64(n)
		return n, nil
	}
	for len(p) > 0 {
		if s.pageSize == 0 {
			p = s.readFirstPage(p)
			continue
		}
		// Bytes up to the next page boundary.
		next := (s.pos/s.pageSize + 1) * s.pageSize
		chunk := p
		if int64(len(chunk)) > next-s.pos {
			chunk = chunk[:next-s.pos]
		}
		s.scanHeader(chunk)
		s.feed(chunk)
		s.pos += int64(len(chunk))
		p = p[len(chunk):]
	}
	return n, nil
}

// readFirstPage buffers page 0 until it holds the meta, which gives the page size.
func (s *boltScanner) readFirstPage(p []byte) []byte {
	const need = pageHeaderSize + 64
	take := min(len(p), need-len(s.first))
	s.first = append(s.first, p[:take]...)
	s.pos += int64(take)
	p = p[take:]
	if len(s.first) < need {
		return p
	}
	m := s.first[pageHeaderSize:]
	le := binary.LittleEndian
	switch {
	case le.Uint16(s.first[8:]) != metaPageFlag || le.Uint32(m[0:]) != boltMagic:
		s.err = errors.New("not a bbolt database: page 0 is not a meta page")
	case le.Uint32(m[4:]) != boltVersion:
		s.err = fmt.Errorf("unsupported bbolt version %d", le.Uint32(m[4:]))
	default:
		h := fnv.New64a()
		h.Write(m[:56])
		if h.Sum64() != le.Uint64(m[56:]) {
			s.err = errors.New("bbolt meta page 0 checksum mismatch")
		}
	}
	ps := int64(le.Uint32(m[8:]))
	if s.err == nil && (ps < 1024 || ps > 1<<20 || ps&(ps-1) != 0) {
		s.err = fmt.Errorf("implausible bbolt page size %d", ps)
	}
	s.meta.root, s.meta.pgid, s.meta.valid = le.Uint64(m[16:]), le.Uint64(m[40:]), true
	s.pageSize = ps
	s.first = nil
	if s.err != nil {
		s.pos += int64(len(p))
		return nil
	}
	return p
}

// scanHeader starts a page parse when chunk begins a page whose header names its own id.
func (s *boltScanner) scanHeader(chunk []byte) {
	inPage := s.pos % s.pageSize
	if inPage >= pageHeaderSize {
		return
	}
	if inPage == 0 {
		s.hdrBuf = s.hdrBuf[:0]
	}
	take := min(len(chunk), pageHeaderSize-len(s.hdrBuf))
	s.hdrBuf = append(s.hdrBuf, chunk[:take]...)
	if len(s.hdrBuf) < pageHeaderSize {
		return
	}
	le := binary.LittleEndian
	start := s.pos - inPage
	id := le.Uint64(s.hdrBuf[0:])
	flags := le.Uint16(s.hdrBuf[8:])
	count := int64(le.Uint16(s.hdrBuf[10:]))
	overflow := int64(le.Uint32(s.hdrBuf[12:]))
	if id != uint64(start/s.pageSize) || (flags != branchPageFlag && flags != leafPageFlag) {
		return
	}
	span := (overflow + 1) * s.pageSize
	hdrLen := min(span, pageHeaderSize+count*elemSize, maxCaptureHeader)
	pp := &pageParse{id: id, start: start, span: span, hdr: capture{buf: make([]byte, hdrLen)}}
	// The header bytes already seen are fed again by feed, which copies from start.
	s.active = append(s.active, pp)
}

// feed gives chunk, which starts at s.pos, to every page being parsed.
func (s *boltScanner) feed(chunk []byte) {
	end := s.pos + int64(len(chunk))
	kept := s.active[:0]
	for _, pp := range s.active {
		if !pp.hdr.done() {
			pp.fill(&pp.hdr, s.pos, chunk, s.hdrBuf)
			if pp.hdr.done() {
				pp.planItems()
			}
		}
		if pp.itemsSet {
			for _, c := range pp.items {
				if !c.done() {
					pp.fill(c, s.pos, chunk, nil)
				}
			}
		}
		if pp.complete() {
			s.summarise(pp)
			continue
		}
		if end >= pp.start+pp.span {
			continue // page ended without what its headers promised: a stale or corrupt page
		}
		kept = append(kept, pp)
	}
	s.active = kept
}

// fill copies the part of chunk (at absolute offset at) that falls in c. For the header
// capture, bytes of the page header that arrived in an earlier write come from hdr.
func (pp *pageParse) fill(c *capture, at int64, chunk, hdr []byte) {
	for c.fill < len(c.buf) {
		abs := pp.start + c.off + int64(c.fill)
		switch {
		case abs >= at && abs < at+int64(len(chunk)):
			c.fill += copy(c.buf[c.fill:], chunk[abs-at:])
		case abs < at && hdr != nil && abs-pp.start < int64(len(hdr)):
			c.fill += copy(c.buf[c.fill:], hdr[abs-pp.start:])
		default:
			return
		}
	}
}

func (pp *pageParse) complete() bool {
	if !pp.hdr.done() || !pp.itemsSet {
		return false
	}
	for _, c := range pp.items {
		if !c.done() {
			return false
		}
	}
	return true
}

func (pp *pageParse) flags() uint16 { return binary.LittleEndian.Uint16(pp.hdr.buf[8:]) }
func (pp *pageParse) count() int    { return int(binary.LittleEndian.Uint16(pp.hdr.buf[10:])) }

// leafElem returns leaf element i's flags, key offset (relative to the page) and sizes.
func leafElem(page []byte, i int) (flags uint32, keyOff, ksize, vsize int64) {
	e := page[pageHeaderSize+i*elemSize:]
	le := binary.LittleEndian
	flags = le.Uint32(e[0:])
	keyOff = int64(pageHeaderSize+i*elemSize) + int64(le.Uint32(e[4:]))
	return flags, keyOff, int64(le.Uint32(e[8:])), int64(le.Uint32(e[12:]))
}

// planItems decides, from a leaf page's element headers, which keys and values to capture.
// Each leaf element gets two captures (key, value), empty when not needed.
func (pp *pageParse) planItems() {
	pp.itemsSet = true
	n := pp.count()
	if pp.flags() != leafPageFlag || int64(pageHeaderSize+n*elemSize) > int64(len(pp.hdr.buf)) {
		return
	}
	want := func(off, size int64) *capture {
		if off < 0 || size < 0 || off+size > pp.span {
			return &capture{}
		}
		return &capture{off: off, buf: make([]byte, size)}
	}
	pp.items = make([]*capture, 0, 2*n)
	for i := range n {
		flags, koff, ksize, vsize := leafElem(pp.hdr.buf, i)
		var key, val *capture
		switch {
		case flags&bucketLeafFlag != 0 && (ksize == int64(len(keyBucketName)) || ksize == int64(len(metaBucketName))):
			key, val = want(koff, ksize), want(koff+ksize, min(vsize, maxCaptureValue))
		case (ksize == markedRevKeyLen || ksize == int64(len(scheduledCompactKey))) && vsize == revKeyLen:
			// Could be meta's finishedCompactRev or scheduledCompactRev (or a tombstone's
			// key, which is also 18 bytes).
			key, val = want(koff, ksize), want(koff+ksize, vsize)
		case i == n-1 && (ksize == revKeyLen || ksize == markedRevKeyLen):
			key, val = want(koff, ksize), &capture{}
		default:
			key, val = &capture{}, &capture{}
		}
		pp.items = append(pp.items, key, val)
	}
}

func revMain(k []byte) (int64, bool) {
	if (len(k) != revKeyLen && len(k) != markedRevKeyLen) || k[8] != '_' {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(k)), true
}

func (s *boltScanner) summarise(pp *pageParse) {
	switch pp.flags() {
	case branchPageFlag:
		if n := pp.count(); n > 0 && int64(pageHeaderSize+n*elemSize) <= int64(len(pp.hdr.buf)) {
			e := pp.hdr.buf[pageHeaderSize+(n-1)*elemSize:]
			s.branchLast[pp.id] = binary.LittleEndian.Uint64(e[8:])
		}
	case leafPageFlag:
		var refs [2]bucketRef
		var isBucketPage bool
		for i := 0; i+1 < len(pp.items); i += 2 {
			key, val := pp.items[i].buf, pp.items[i+1].buf
			flags, _, _, _ := leafElem(pp.hdr.buf, i/2)
			switch {
			case flags&bucketLeafFlag != 0:
				isBucketPage = true
				if bytes.Equal(key, keyBucketName) {
					refs[0] = parseBucketRef(val)
				} else if bytes.Equal(key, metaBucketName) {
					refs[1] = parseBucketRef(val)
				}
			case isCompactKey(key):
				if rev, ok := revMain(val); ok {
					s.compactAt[pp.id] = max(s.compactAt[pp.id], rev)
				}
			case i+2 == len(pp.items):
				if rev, ok := revMain(key); ok {
					s.leaves = append(s.leaves, leafRev{pp.id, rev})
				}
			}
		}
		if pp.count() == 0 {
			// An empty key bucket is an empty root leaf.
			s.leaves = append(s.leaves, leafRev{pp.id, 0})
		}
		if isBucketPage {
			s.buckets[pp.id] = refs
		}
	}
}

func parseBucketRef(v []byte) bucketRef {
	if len(v) < 16 {
		return bucketRef{}
	}
	r := bucketRef{root: binary.LittleEndian.Uint64(v), found: true}
	if r.root == 0 {
		r.inline = v[16:]
	}
	return r
}

// scanResult is what the scanner found.
type scanResult struct {
	// Revision is the revision a member restored from this snapshot serves:
	// max(KeyRevision, CompactRevision).
	Revision int64
	// KeyRevision is the highest main revision in the key bucket, which is what
	// `etcdutl snapshot status` reports as the revision.
	KeyRevision     int64
	CompactRevision int64
	PageSize        int64
	// Size is the bbolt file size the meta page declares (pgid × page size).
	Size int64
}

// result walks the live tree over the page summaries. Call it after the whole file was written.
func (s *boltScanner) result() (scanResult, error) {
	if s.err != nil {
		return scanResult{}, s.err
	}
	if !s.meta.valid {
		return scanResult{}, fmt.Errorf("truncated bbolt database: only %d bytes", s.pos)
	}
	r := scanResult{PageSize: s.pageSize, Size: int64(s.meta.pgid) * s.pageSize}
	if s.pos != r.Size {
		return r, fmt.Errorf("bbolt database is %d bytes but its meta page says %d", s.pos, r.Size)
	}
	refs, ok := s.buckets[s.meta.root]
	if !ok {
		return r, fmt.Errorf("bbolt root bucket page %d not found or not a single leaf page", s.meta.root)
	}
	keyRef, metaRef := refs[0], refs[1]
	if !keyRef.found || !metaRef.found {
		return r, errors.New("not an etcd database: no \"key\" or \"meta\" bucket")
	}

	var err error
	if r.KeyRevision, err = s.keyRevision(keyRef); err != nil {
		return r, err
	}
	if metaRef.root == 0 {
		r.CompactRevision = inlineCompactRev(metaRef.inline)
	} else if rev, ok := s.compactAt[metaRef.root]; ok {
		r.CompactRevision = rev
	} else if _, isBranch := s.branchLast[metaRef.root]; isBranch {
		return r, fmt.Errorf("etcd meta bucket spans several pages (root %d): not supported", metaRef.root)
	}
	// etcd's store starts at revision 1, so an empty one is at 1 too. A compaction past the
	// newest key (its tombstone compacted away) carries the revision with it.
	r.Revision = max(r.KeyRevision, r.CompactRevision, 1)
	return r, nil
}

func (s *boltScanner) keyRevision(ref bucketRef) (int64, error) {
	if ref.root == 0 {
		return inlineLastRev(ref.inline)
	}
	pg := ref.root
	for depth := 0; ; depth++ {
		child, ok := s.branchLast[pg]
		if !ok {
			break
		}
		if depth > 64 {
			return 0, errors.New("bbolt key bucket tree is cyclic")
		}
		pg = child
	}
	// A page completes when its farthest capture has streamed past, so a stale page whose
	// overflow header spans later pages completes after them: sort before searching. A list
	// of 16-byte entries, not a map, keeps the memory per leaf page small.
	byPage := func(l leafRev, id uint64) int { return cmp.Compare(l.pgid, id) }
	slices.SortFunc(s.leaves, func(a, b leafRev) int { return byPage(a, b.pgid) })
	i, ok := slices.BinarySearchFunc(s.leaves, pg, byPage)
	if !ok {
		return 0, fmt.Errorf("etcd key bucket's last leaf page %d is missing or holds no revision key", pg)
	}
	return s.leaves[i].rev, nil
}

// inline buckets hold a whole leaf page in their value.
func inlineElems(page []byte, fn func(flags uint32, key, val []byte)) {
	if len(page) < pageHeaderSize {
		return
	}
	n := int(binary.LittleEndian.Uint16(page[10:]))
	for i := range n {
		if pageHeaderSize+(i+1)*elemSize > len(page) {
			return
		}
		flags, koff, ksize, vsize := leafElem(page, i)
		if koff+ksize+vsize > int64(len(page)) {
			return
		}
		fn(flags, page[koff:koff+ksize], page[koff+ksize:koff+ksize+vsize])
	}
}

func inlineLastRev(page []byte) (int64, error) {
	var last []byte
	inlineElems(page, func(_ uint32, k, _ []byte) { last = k })
	if last == nil {
		return 0, nil
	}
	rev, ok := revMain(last)
	if !ok {
		return 0, fmt.Errorf("etcd key bucket holds a key that is not a revision: %q", last)
	}
	return rev, nil
}

// isCompactKey matches meta's two compaction keys. A compaction is scheduled (persisted)
// before it runs and finished after; a member restored with scheduledCompactRev above
// finishedCompactRev finishes the interrupted compaction and serves at least that revision
// (etcd's mvcc store.restore), so the compaction revision is the larger of the two.
func isCompactKey(k []byte) bool {
	return bytes.Equal(k, finishedCompactKey) || bytes.Equal(k, scheduledCompactKey)
}

func inlineCompactRev(page []byte) int64 {
	var rev int64
	inlineElems(page, func(_ uint32, k, v []byte) {
		if r, ok := revMain(v); ok && isCompactKey(k) {
			rev = max(rev, r)
		}
	})
	return rev
}
